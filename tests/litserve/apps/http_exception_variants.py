# Written for ferryman's fixtures (not copied from LitServe), in the style of LitServe's tests/e2e
# apps: predict raises each kind of HTTP exception a user might raise, to record which status,
# body and headers reach the client under LitServe.
import starlette.exceptions
from fastapi import HTTPException

import litserve as ls


class Raises(ls.LitAPI):
    def __init__(self, kind, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind

    def setup(self, device):
        self.model = None

    def decode_request(self, request):
        return request

    def predict(self, x):
        if self.kind == "fastapi-with-headers":
            raise HTTPException(status_code=429, detail="slow down", headers={"Retry-After": "7"})
        if self.kind == "fastapi-dict-detail":
            raise HTTPException(status_code=400, detail={"field": "input", "problem": "missing"})
        if self.kind == "fastapi-no-detail":
            raise HTTPException(status_code=503)
        if self.kind == "fastapi-204":
            raise HTTPException(status_code=204)
        if self.kind == "starlette":
            raise starlette.exceptions.HTTPException(status_code=418, detail="teapot")
        if self.kind == "value-error":
            raise ValueError("plain error")
        raise RuntimeError(self.kind)

    def encode_response(self, output):
        return {"output": output}


if __name__ == "__main__":
    kinds = ["fastapi-with-headers", "fastapi-dict-detail", "fastapi-no-detail", "fastapi-204", "starlette", "value-error"]
    server = ls.LitServer([Raises(kind, api_path=f"/{kind}") for kind in kinds])
    server.run(port=8000)
