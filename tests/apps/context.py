"""Test API for the per-request context and callbacks."""

import json
import os

import ferryman


class Recorder(ferryman.Callback):
    def _write(self, event):
        path = os.environ.get("FERRYMAN_TEST_EVENTS")
        if path:
            with open(path, "a") as f:
                f.write(f"{os.getpid()} {event}\n")

    def on_server_start(self, api):
        self._write("start")

    def on_before_predict(self, api):
        self._write("before")

    def on_after_predict(self, api):
        self._write("after")


class Broken(ferryman.Callback):
    def on_before_predict(self, api):
        raise RuntimeError("a broken hook")


class WithContext(ferryman.API):
    callbacks = [Recorder(), Broken()]

    def decode_request(self, request, context):
        context["decoded_by"] = "decode_request"
        return request

    def predict(self, x, context):
        return {
            "request_id": context.request_id,
            "custom": context.headers.get("x-custom"),
            "time_left": context.time_left(),
            "decoded_by": context["decoded_by"],
            "keys": sorted(context),
        }

    def encode_response(self, output, context):
        return {**output, "encoded": json.dumps(isinstance(context, dict))}
