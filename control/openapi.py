"""The admin API's OpenAPI document, served at /openapi.json (runs in the supervisor).

Complete enough for a client generator or a fuzzer (schemathesis): every path parameter, query
parameter, request body and response, with its schema.
"""

from __future__ import annotations

from typing import Any

from ferryman._version import __version__


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERR = _json(_ref("Error"), "error")
OBJ: dict[str, Any] = {"type": "object"}

_PIDS = {"type": "array", "items": {"type": "integer"}}
_OUTCOME = {
    "type": "object",
    "properties": {
        "state": {"type": "string", "enum": ["done", "failed", "timeout"]},
        "started": _PIDS,
        "stopped": _PIDS,
        "kept": _PIDS,
    },
}

NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
WAIT = {"name": "wait", "in": "query", "schema": {"type": "boolean"}}
# OpenAPI 3.0 (JSON Schema draft 4): exclusiveMinimum is a flag on minimum, not a number.
TIMEOUT = {
    "name": "timeout",
    "in": "query",
    "schema": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
}
MODEL_Q = {"name": "model", "in": "query", "schema": {"type": "string"}}


def _op(
    summary: str,
    ok: dict[str, dict[str, Any]],
    errors: tuple[str, ...] = (),
    params: tuple[dict[str, Any], ...] = (),
    body: dict[str, Any] | None = None,
    secured: bool = True,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**ok, **dict.fromkeys(errors, ERR)}}
    if secured:
        op["responses"].setdefault("401", ERR)
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if not secured:
        op["security"] = []
    return op


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "ferryman admin API", "version": __version__},
    "security": [{"bearer": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["type", "message"],
                        "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            },
            "Scale": {
                "type": "object",
                "oneOf": [
                    {
                        "required": ["count"],
                        "properties": {"count": {"type": "integer", "minimum": 1}},
                        "additionalProperties": False,
                    },
                    {
                        "required": ["per_device"],
                        "properties": {"per_device": {"type": "integer", "minimum": 1}},
                        "additionalProperties": False,
                    },
                ],
            },
            "NewModel": {
                "type": "object",
                "required": ["app"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
                    "app": {"type": "string"},
                    "api_path": {"type": "string"},
                    "workers_per_device": {"type": "integer", "minimum": 1},
                    "accelerator": {"type": "string", "enum": ["auto", "cpu", "cuda"]},
                    "max_batch_size": {"type": "integer", "minimum": 1},
                    "batch_timeout": {"type": "number", "minimum": 0},
                },
                "description": "name, app, and any model option (see `ferryman serve --help`)",
            },
            "Process": {
                "type": "object",
                "properties": {
                    "role": {"type": "string"},
                    "model": {"type": "string", "nullable": True},
                    "id": {"type": "integer"},
                    "pid": {"type": "integer", "nullable": True},
                    "device": {"type": "string"},
                    "state": {"type": "string"},
                    "restarts": {"type": "integer"},
                },
            },
            "Model": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "app": {"type": "string"},
                    "api_path": {"type": "string"},
                    "state": {"type": "string"},
                    "devices": {"type": "array", "items": {"type": "string"}},
                    "workers": {"type": "array", "items": _ref("Process")},
                },
            },
            "Outcome": _OUTCOME,
        },
    },
    "paths": {
        "/health": {
            "get": _op("the supervisor is alive", {"200": _json(OBJ, "alive")}, secured=False)
        },
        "/ready": {
            "get": _op(
                "every model (or ?model=NAME) has a ready worker",
                {"200": _json(OBJ, "ready")},
                ("404", "503"),
                (MODEL_Q,),
                secured=False,
            )
        },
        "/v1/status": {
            "get": _op(
                "every process: role, model, id, pid, device, state", {"200": _json(OBJ, "status")}
            )
        },
        "/v1/workers": {
            "get": _op(
                "every worker slot",
                {"200": _json({"type": "array", "items": _ref("Process")}, "workers")},
            ),
            "put": _op(
                "scale the workers of the only model",
                {
                    "200": _json(_ref("Outcome"), "carried out (wait=true)"),
                    "202": _json(OBJ, "scaling"),
                },
                ("409", "422", "503", "504"),
                (WAIT, TIMEOUT),
                _ref("Scale"),
            ),
        },
        "/v1/workers/{id}": {
            "get": _op(
                "one worker slot of the only model",
                {"200": _json(_ref("Process"), "worker")},
                ("404", "409"),
                (ID,),
            )
        },
        "/v1/workers/{id}/restart": {
            "post": _op(
                "replace a worker of the only model (the new one ready first)",
                {"200": _json(_ref("Outcome"), "done"), "202": _json(OBJ, "restarting")},
                ("404", "409", "422", "503", "504"),
                (ID, WAIT, TIMEOUT),
            )
        },
        "/v1/api-servers/{id}/restart": {
            "post": _op(
                "replace an API process",
                {"200": _json(_ref("Outcome"), "done"), "202": _json(OBJ, "restarting")},
                ("404", "409", "422", "503", "504"),
                (ID, WAIT, TIMEOUT),
            )
        },
        "/v1/reload": {
            "post": _op(
                "rolling reload of every process, as SIGHUP",
                {"200": _json(_ref("Outcome"), "done"), "202": _json(OBJ, "reloading")},
                ("409", "422", "503", "504"),
                (WAIT, TIMEOUT),
            )
        },
        "/v1/models": {
            "get": _op(
                "every model",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"models": {"type": "array", "items": _ref("Model")}},
                        },
                        "models",
                    )
                },
            ),
            "post": _op(
                "register a model and start its workers",
                {
                    "201": _json(_ref("Model"), "ready (wait=true)"),
                    "202": _json(_ref("Model"), "starting"),
                },
                ("409", "422", "503", "504"),
                (WAIT, TIMEOUT),
                _ref("NewModel"),
            ),
        },
        "/v1/models/{name}": {
            "get": _op("one model", {"200": _json(_ref("Model"), "model")}, ("404",), (NAME,)),
            "delete": _op(
                "drain and stop a model's workers; its route goes away",
                {"200": _json(OBJ, "removed (wait=true)"), "202": _json(OBJ, "removing")},
                ("404", "409", "422", "504"),
                (NAME, WAIT, TIMEOUT),
            ),
        },
        "/v1/models/{name}/workers": {
            "put": _op(
                "scale a model's workers",
                {
                    "200": _json(_ref("Outcome"), "carried out (wait=true)"),
                    "202": _json(OBJ, "scaling"),
                },
                ("404", "409", "422", "503", "504"),
                (NAME, WAIT, TIMEOUT),
                _ref("Scale"),
            )
        },
        "/v1/models/{name}/reload": {
            "post": _op(
                "rolling reload of a model's workers",
                {"200": _json(_ref("Outcome"), "done"), "202": _json(OBJ, "reloading")},
                ("404", "409", "422", "503", "504"),
                (NAME, WAIT, TIMEOUT),
            )
        },
        "/v1/models/{name}/workers/{id}": {
            "get": _op(
                "one worker slot of a model",
                {"200": _json(_ref("Process"), "worker")},
                ("404",),
                (NAME, ID),
            )
        },
        "/v1/models/{name}/workers/{id}/restart": {
            "post": _op(
                "replace one worker of a model (the new one ready first)",
                {"200": _json(_ref("Outcome"), "done"), "202": _json(OBJ, "restarting")},
                ("404", "409", "422", "503", "504"),
                (NAME, ID, WAIT, TIMEOUT),
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition for every process",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": ERR,
                },
            }
        },
        "/openapi.json": {"get": _op("this document", {"200": _json(OBJ, "OpenAPI")})},
    },
}
