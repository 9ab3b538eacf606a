# Written for ferryman's fixtures (not copied from LitServe), in the style of LitServe's tests/e2e
# apps: streaming LitAPIs whose encode_response yields each kind of item, to record the bytes that
# LitServe's format_encoded_response puts on the wire (dict, pydantic model, str, bytes, list), and
# what a client gets when an error happens before or after the first item.
from fastapi import HTTPException
from pydantic import BaseModel

import litserve as ls


class Item(BaseModel):
    output: int


class YieldsItems(ls.LitAPI):
    def __init__(self, kind, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind

    def setup(self, device):
        self.model = None

    def decode_request(self, request):
        return request["n"]

    def predict(self, n):
        for i in range(n):
            if self.kind == "error-after-first" and i == 1:
                raise ValueError("failed after the first item")
            if self.kind == "http-error-after-first" and i == 1:
                raise HTTPException(status_code=418, detail="teapot after the first item")
            yield i

    def encode_response(self, outputs):
        if self.kind == "http-error-before-first":
            raise HTTPException(status_code=418, detail="teapot before the first item")
        for i in outputs:
            if self.kind == "pydantic":
                yield Item(output=i)
            elif self.kind == "string":
                yield f"item {i}"
            elif self.kind == "bytes":
                yield f"bytes {i}|".encode()
            elif self.kind == "list":
                yield [i, i]
            else:
                yield {"output": i}


if __name__ == "__main__":
    kinds = [
        "dict",
        "pydantic",
        "string",
        "bytes",
        "list",
        "error-after-first",
        "http-error-after-first",
        "http-error-before-first",
    ]
    server = ls.LitServer([YieldsItems(kind, api_path=f"/{kind}", stream=True) for kind in kinds])
    server.run(port=8000)
