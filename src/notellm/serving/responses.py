"""Error bodies that always encode, and the handlers that make every bad request a 4xx naming the field.

FastAPI's default 422 body echoes the client's input back; a lone surrogate ("\\ud800") in that input cannot be
encoded as UTF-8, so the error handler itself crashed and the client saw a 500. Here every body is rendered by
`SafeJSONResponse` (UTF-8 when it can, ASCII escapes when it cannot) and validation errors leave the input out.

A validation error body:
    {"detail": [{"loc": ["body", "note", "title"], "field": "note.title", "msg": "...", "type": "..."}],
     "field": "note.title"}
`field` is the first failing field without its `body`/`query`/`path` prefix.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from notellm.errors import DataError, NotellmError

log = logging.getLogger("notellm.serving")
LOCATIONS = ("body", "query", "path", "header", "cookie")


class SafeJSONResponse(JSONResponse):
    """JSON that cannot fail to encode: lone surrogates become `\\udxxx` escapes (still valid JSON)."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"),
                              default=str).encode("ascii")


def printable(value: Any) -> Any:
    """A message or location part that is safe to show: strings with lone surrogates escaped."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, int):
        return value
    return printable(str(value))


def field_name(loc: tuple | list) -> str:
    """("body", "notes", 3, "title") -> "notes.3.title"; a whole body -> "body"."""
    parts = [printable(p) for p in loc]
    if len(parts) > 1 and parts[0] in LOCATIONS:
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "body"


def validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    detail = []
    for error in errors:
        loc = [printable(p) for p in error.get("loc", ())]
        if error.get("type") == "json_invalid":  # loc is ("body", character offset): the body as a whole
            loc = ["body"]
        detail.append({"loc": loc, "field": field_name(loc), "msg": printable(error.get("msg", "invalid")),
                       "type": printable(error.get("type", "value_error"))})
    if not detail:
        detail = [{"loc": ["body"], "field": "body", "msg": "invalid request", "type": "value_error"}]
    return {"detail": detail, "field": detail[0]["field"]}


def install_error_handlers(app: FastAPI) -> None:
    """422 for invalid requests and DataError, the HTTPException's own status otherwise, JSON that encodes."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError):
        return SafeJSONResponse(validation_body(list(exc.errors())), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, (dict, list)) else printable(exc.detail)
        return SafeJSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(DataError)
    async def data_error(_request: Request, exc: DataError):
        return SafeJSONResponse({"detail": printable(str(exc)), "field": exc.field}, status_code=422)

    @app.exception_handler(NotellmError)
    async def notellm_error(_request: Request, exc: NotellmError):
        log.error("request failed: %s", printable(str(exc)))
        return SafeJSONResponse({"detail": printable(str(exc))}, status_code=500)
