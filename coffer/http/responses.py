"""Answers and errors in the documented shape, and the one bounded body reader.

Every error answer is ``{"error": {"code", "message", "account_id"?}}`` (:func:`error_body`); a
503 says ``Retry-After: 1``. A handler raises :class:`HttpError` for an answer that is not a
success; the server's route wrapper turns it into :func:`error_response`.
"""

from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
from starlette.responses import Response

from coffer.core.errors import ErrorCode
from coffer.http import inputs
from coffer.http.limits import request_bytes_max
from coffer.http.views import error_body

_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()
retry_after = {"Retry-After": "1"}  # on every 503: the outcome is a moment away


class HttpError(Exception):
    """An answer that is not a success: ``status`` with the stable error ``code`` (an :class:`ErrorCode`)."""

    def __init__(self, status: int, code: str, message: str, account_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.account_id = account_id


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.encode(body), status_code=status, media_type="application/json", headers=headers)


def encoded_answer(body: Any, binary: bool) -> tuple[bytes, bytes]:
    """The answer's bytes and media type: MessagePack when ``binary`` (POST /v1/commands), else JSON."""
    if binary:
        return _msgpack.encode(body), inputs.msgpack_media_type.encode()
    return _json.encode(body), b"application/json"


def error_response(status: int, code: str, message: str, account_id: str | None = None) -> Response:
    return json_response(error_body(code, message, account_id), status, retry_after if status == 503 else None)


async def read_body(headers: Mapping[str, str], chunks: AsyncIterator[bytes], bytes_max: int = request_bytes_max) -> bytes:
    """The request body, refused early (413) when it is larger than ``bytes_max``."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > bytes_max:
        raise HttpError(413, ErrorCode.INVALID_REQUEST, f"request body is larger than {bytes_max} bytes")
    parts = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > bytes_max:
            raise HttpError(413, ErrorCode.INVALID_REQUEST, f"request body is larger than {bytes_max} bytes")
        parts.append(chunk)
    return b"".join(parts)
