"""Reading an upload to ``fcnseg serve``: the body, streamed under a size limit and a time limit, and
the one file of its multipart form, parsed in memory.

Every way a client can get this wrong is a :class:`RequestError` with a 4xx status and a message
that names the problem; nothing a client sends reaches the disk or makes a 5xx.
"""

from __future__ import annotations

import time

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

__all__ = ["FIELD", "MAX_PARTS", "MB", "RequestError", "parse_upload", "read_body"]

FIELD = "image"
"""The multipart field that carries the image in ``POST /predict`` and ``POST /segment``."""

MB = 1_000_000
"""A megabyte, as ``--max-upload-mb`` counts them."""

MAX_PARTS = 16
"""The most parts a form may have: the image and a few fields a browser or script adds."""


class RequestError(Exception):
    """A request refused with an HTTP status (and headers) and a message that names the problem."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


async def read_body(request: Request, limit: int, deadline: float) -> bytes:
    """The request's body: 413 past ``limit`` bytes, 408 when it is still coming at ``deadline``
    (a ``time.monotonic()``).

    Bytes past the limit are read and dropped, not kept, so that a client still sending gets
    the answer rather than a reset connection; one that waits for ``100 Continue`` before
    sending a body declared too large is answered at once, and sends nothing.
    """
    declared = request.headers.get("content-length", "")
    too_large = declared.isdigit() and int(declared) > limit
    if too_large and request.headers.get("expect", "").lower() == "100-continue":
        raise _too_large(int(declared), limit)
    kept: bytearray | None = None if too_large else bytearray()
    size = 0
    try:
        with anyio.fail_after(max(0.0, deadline - time.monotonic())):
            async for chunk in request.stream():
                size += len(chunk)
                if kept is not None and size <= limit:
                    kept += chunk
                else:
                    kept = None  # over the limit: the rest is only counted
    except TimeoutError:
        raise RequestError(
            408, "the upload did not arrive in time (fcnseg serve --timeout)", {"Connection": "close"}
        ) from None
    except ClientDisconnect:
        raise RequestError(400, "the client closed the connection before the upload ended") from None
    if kept is None:
        raise _too_large(size, limit)
    return bytes(kept)


def _too_large(size: int, limit: int) -> RequestError:
    return RequestError(
        413,
        f"the upload is {size / MB:.3g} MB, over the {limit / MB:.3g} MB limit (fcnseg serve --max-upload-mb)",
    )


class _Part:
    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.data = bytearray()
        self.name: str | None = None
        self.filename: str | None = None


class _Form:
    """The parts of a multipart body, as the parser's callbacks find them."""

    def __init__(self) -> None:
        self.parts: list[_Part] = []
        self.field, self.value = b"", b""
        self.ended = False

    def callbacks(self) -> dict[str, object]:
        return {f"on_{name}": getattr(self, name) for name in (
            "part_begin", "part_data", "header_field", "header_value", "header_end", "headers_finished", "end"
        )}  # fmt: skip

    def part_begin(self) -> None:
        if len(self.parts) == MAX_PARTS:
            raise RequestError(400, f"the form has over {MAX_PARTS} parts; send the image alone")
        self.parts.append(_Part())

    def part_data(self, data: bytes, start: int, stop: int) -> None:
        self.parts[-1].data += data[start:stop]

    def header_field(self, data: bytes, start: int, stop: int) -> None:
        self.field += data[start:stop]

    def header_value(self, data: bytes, start: int, stop: int) -> None:
        self.value += data[start:stop]

    def header_end(self) -> None:
        self.parts[-1].headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def headers_finished(self) -> None:
        part = self.parts[-1]
        _, disposition = parse_options_header(part.headers.get(b"content-disposition"))
        if b"name" not in disposition:
            raise RequestError(
                400, "a part of the form has no name (Content-Disposition: form-data; name=...)"
            )
        part.name = _text(disposition[b"name"])
        if b"filename" in disposition:
            part.filename = _text(disposition[b"filename"])
            if sum(p.filename is not None for p in self.parts) > 1:
                raise RequestError(
                    400, f"the form holds more than one file; send one, in the field '{FIELD}'"
                )

    def end(self) -> None:
        self.ended = True


def parse_upload(body: bytes, content_type: str) -> tuple[bytes, str]:
    """The bytes and file name of the file in the field ``image`` of a multipart/form-data ``body``.

    Parsed in memory (the body is already under the upload limit), at most :data:`MAX_PARTS`
    parts and one file; a body that is not such a form is a 400 that says what it lacks.
    """
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        raise RequestError(
            400,
            f"expected a multipart/form-data upload with the image in the field '{FIELD}', "
            f"got content type {content_type or 'none'!r} (curl -F {FIELD}=@photo.jpg)",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestError(400, "the multipart/form-data upload has no boundary in its content type")
    form = _Form()
    try:
        parser = MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError as error:
        raise RequestError(400, f"the multipart/form-data upload is malformed: {error}") from None
    if not form.ended:
        raise RequestError(400, "the multipart/form-data upload ends before its closing boundary")
    found = [p for p in form.parts if p.name == FIELD]
    if not found:
        names = ", ".join(repr(p.name) for p in form.parts) or "none"
        raise RequestError(400, f"the field '{FIELD}' is missing (fields sent: {names})")
    if found[0].filename is None:
        raise RequestError(400, f"the field '{FIELD}' is a text value, not a file")
    return bytes(found[0].data), found[0].filename or "upload"


def _text(value: bytes) -> str:
    """A header parameter as text: UTF-8 as browsers send it, anything else shown as it is."""
    return value.decode("utf-8", errors="backslashreplace")
