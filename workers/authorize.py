"""`LitAPI.authorize`, run in the inference worker the way FastAPI runs a route's dependency.

LitServe adds `Depends(lit_api.authorize)` to its routes, so authorize's parameters are FastAPI
dependencies (`Depends(HTTPBearer())`, `Depends(APIKeyHeader(...))`, `Header(...)`, `Request`,
sub-dependencies, sync or async) and it refuses by raising `HTTPException`. ferryman's API
processes never run user code: the worker does, with FastAPI's own dependency solver, on a
request rebuilt from what the API process sent (method, path, headers, query, body), as soon as
the request reaches the worker, before it is queued for decode_request. So a refused request
never takes a place in a batch, and LitServe's `timeout` (the wait in the queue) starts after it.

Answers, as FastAPI's: an `HTTPException` (FastAPI's or starlette's) keeps its status, detail
and headers (`www-authenticate: Bearer`); a missing `Header(...)` is a 422 with FastAPI's
`{"detail": [...]}`; any other exception is a 500 whose text stays in the worker's log.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from contextlib import AsyncExitStack
from typing import Any

from ferryman.logs import kv
from ferryman.workers.codecs import Failure, RequestError, describe_http
from ferryman.workers.forms import starlette_request

log = logging.getLogger("ferryman.worker")


def _endpoint() -> None:
    """The route's own function: authorize is its only dependency."""


class Authorizer:
    """Runs an API's `authorize` for each request; `check` returns None when it lets it in."""

    def __init__(self, fn: Any, name: str) -> None:
        from fastapi import Depends
        from fastapi.dependencies.utils import (
            get_dependant,
            get_parameterless_sub_dependant,
            solve_dependencies,
        )

        self.name = name
        self.solve = solve_dependencies
        self.dependant = get_dependant(path="/", call=_endpoint)
        self.dependant.dependencies.insert(
            0, get_parameterless_sub_dependant(depends=Depends(fn), path="/")
        )
        accepted = inspect.signature(solve_dependencies).parameters
        self.extra: dict[str, Any] = {}
        if "embed_body_fields" in accepted:
            self.extra["embed_body_fields"] = False

    async def check(
        self,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]],
        query: bytes,
        body: bytes,
        request_id: str,
    ) -> Failure | None:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query,
            "headers": headers,
            "client": None,
            "server": None,
        }
        try:
            async with AsyncExitStack() as inner, AsyncExitStack() as function:
                scope["fastapi_inner_astack"] = inner
                scope["fastapi_function_astack"] = function
                solved = await self.solve(
                    request=starlette_request(scope, body),
                    dependant=self.dependant,
                    async_exit_stack=inner,
                    **self.extra,
                )
        except Exception as e:
            http = describe_http(e)
            if http is not None:
                return http
            log.error(
                f"{self.name}.authorize raised {type(e).__name__}: {e}",
                extra=kv(
                    stage="authorize",
                    request_id=request_id,
                    traceback="".join(traceback.format_exception(e)).rstrip(),
                ),
            )
            return Failure(500, "internal_error", "authorize failed", None, plain=True)
        if solved.errors:
            from fastapi.encoders import jsonable_encoder

            detail = jsonable_encoder(list(solved.errors))
            err = RequestError(422, "invalid_request", "authorize: invalid request", detail=detail)
            return Failure(err.status, err.kind, err.message, err.detail)
        return None
