"""HTTP plumbing shared by the server's routes and the demo site: JSON bodies in and out, API errors, the
security headers every response carries, the static files' folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["ApiError", "SECURITY_HEADERS", "STATIC_DIR", "SecurityHeaders", "error_body", "json_response", "only",
           "read_json"]

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"

# Sent with every response. The pages carry no inline script or style, so the policy can forbid both.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                                 b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, field: str | None = None, *,
                 headers: dict | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.error, self.message, self.field, self.extra = status, error, message, field, extra
        self.headers = headers


def json_response(payload: Any, status: int = 200, headers: dict | None = None) -> Response:
    # json.dumps with its default arguments uses the module's cached encoder: the fastest way in the stdlib.
    return Response(json.dumps(payload).encode(), status, headers, media_type="application/json")


def error_body(status: int, error: str, message: str, field: str | None = None, **extra: Any) -> dict:
    out: dict[str, Any] = {"error": error, "message": message}
    if field is not None:
        out["field"] = field
    out.update(extra)
    return out


# --------------------------------------------------------------------------- request bodies


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ApiError(400, "invalid_body", f"{key}: given twice in one object", field=key)
            seen.add(key)
    return out


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)


async def read_json(request: Request, limit: int, *, required: bool = True) -> dict:
    """The body as a JSON object, or an ApiError naming what is wrong (413 over `limit` bytes)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise ApiError(400, "invalid_body", "content-length: not a number", field="content-length")
        if len(length) > 18 or int(length) > limit:  # int() of thousands of digits would raise, not compare
            raise ApiError(413, "body_too_large", f"body: {length[:20]} bytes, at most {limit} accepted", field="body")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"body: over {limit} bytes", field="body")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if required:
            raise ApiError(400, "invalid_body", "body: expected a JSON object", field="body")
        return {}
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       f"content-type: expected application/json, got {ctype or 'nothing'}", field="content-type")
    try:
        value = _DECODER.decode(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_body", "body: not UTF-8 text", field="body") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_body", f"body: not valid JSON ({exc.msg} at line {exc.lineno} column "
                                            f"{exc.colno})", field="body") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_body", f"body: not acceptable JSON ({exc.__class__.__name__}: "
                                            f"{str(exc)[:100]})", field="body") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_body", f"body: expected a JSON object, got {type(value).__name__}", field="body")
    return value


def only(body: dict, allowed: tuple[str, ...]) -> None:
    for key in body:
        if key not in allowed:
            raise ApiError(400, "invalid_body", f"{str(key)[:64]}: unknown field; expected "
                                                f"{', '.join(allowed) or 'an empty body'}", field=str(key)[:64])


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response (pure ASGI: no per-request objects)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
