# Written for ferryman's fixtures (not copied from LitServe), in the style of LitServe's tests/e2e
# apps: one LitAPI per kind of value that encode_response may return, to record how LitServe
# renders each one (JSON, a Response object, a pydantic model, a string, None, bytes).
from fastapi import Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

import litserve as ls


class Output(BaseModel):
    output: float


class ReturnsValue(ls.LitAPI):
    def __init__(self, kind, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind

    def setup(self, device):
        self.model = lambda x: x**2

    def decode_request(self, request):
        return request["input"]

    def predict(self, x):
        return self.model(x)

    def encode_response(self, output):
        if self.kind == "response":
            return Response(content=f"{output}", media_type="text/plain", status_code=201, headers={"X-Custom": "1"})
        if self.kind == "plaintext":
            return PlainTextResponse(f"squared: {output}")
        if self.kind == "jsonresponse":
            return JSONResponse({"output": output}, status_code=202)
        if self.kind == "pydantic":
            return Output(output=output)
        if self.kind == "string":
            return f"{output}"
        if self.kind == "none":
            return None
        if self.kind == "bytes":
            return b"raw bytes"
        if self.kind == "list":
            return [output, output]
        raise ValueError(self.kind)


class AnnotatedPydantic(ReturnsValue):
    def encode_response(self, output) -> Output:
        return Output(output=output)


if __name__ == "__main__":
    kinds = ["response", "plaintext", "jsonresponse", "pydantic", "string", "none", "bytes", "list"]
    apis = [ReturnsValue(kind, api_path=f"/{kind}") for kind in kinds]
    apis.append(AnnotatedPydantic("pydantic", api_path="/pydantic-annotated"))
    server = ls.LitServer(apis)
    server.run(port=8000)
