"""The admin API's OpenAPI document, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from ferryman._version import __version__

_ERR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _op(summary: str, ok: str = "200", errors: tuple[str, ...] = ()) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: {"description": "ok"}}
    responses.update(dict.fromkeys(errors, _ERR))
    return {"summary": summary, "responses": responses}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "ferryman admin API", "version": __version__},
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
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
                    },
                    {
                        "required": ["per_device"],
                        "properties": {"per_device": {"type": "integer", "minimum": 1}},
                    },
                ],
            },
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "paths": {
        "/health": {"get": _op("the supervisor is alive")},
        "/ready": {"get": _op("ready to serve (503 otherwise)", errors=("503",))},
        "/v1/status": {"get": _op("every process: role, id, pid, device, state, restarts")},
        "/v1/workers": {
            "get": _op("worker slots"),
            "put": {
                "summary": "scale workers, spread evenly over devices",
                "parameters": [
                    {"name": "wait", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "timeout", "in": "query", "schema": {"type": "number"}},
                ],
                "requestBody": {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Scale"}}
                    }
                },
                "responses": {
                    "200": {"description": "reached (wait=true)"},
                    "202": {"description": "scaling"},
                    "409": _ERR,
                    "422": _ERR,
                    "504": _ERR,
                },
            },
        },
        "/v1/workers/{id}": {"get": _op("one worker slot", errors=("404",))},
        "/v1/workers/{id}/restart": {
            "post": _op(
                "drain and replace a worker",
                "202",
                errors=(
                    "404",
                    "409",
                ),
            )
        },
        "/v1/api-servers/{id}/restart": {
            "post": _op(
                "drain and replace an API process",
                "202",
                errors=(
                    "404",
                    "409",
                ),
            )
        },
        "/v1/reload": {
            "post": _op(
                "rolling reload, as SIGHUP; says which pids changed",
                errors=(
                    "409",
                    "422",
                ),
            )
        },
        "/metrics": {"get": _op("Prometheus text exposition for every process")},
    },
}
