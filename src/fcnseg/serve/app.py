"""The web app of ``fcnseg serve``: a page to try a model, on ``GET /info`` and ``POST /segment``.

One model answers every request, one forward pass at a time: ``predict`` switches the
model's mode and caches its fast twin, which concurrent calls must not interleave, and one
pass already uses every core. Reading uploads and encoding results run beside it.

The page (``static/``) shows each entry of ``outputs`` in a response with the view of that
name (``VIEWS`` in ``static/app.js``); checkpoints hold segmentation nets today, and a task
with other outputs adds its entry to :func:`outputs` and its view to the page.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fcnseg.data.images import MAX_PIXELS, ImageReadError, read_image
from fcnseg.data.palette import pascal_palette
from fcnseg.data.preprocess import get_preprocessing, preprocessing_of
from fcnseg.data.synthetic import make_sample, sample_seed
from fcnseg.errors import MissingExtraError
from fcnseg.infer.overlay import colorize
from fcnseg.infer.predict import predict
from fcnseg.models.fcn import FCN

EXTRA = "fcnseg[serve]"
"""What to install for ``fcnseg serve``: Starlette, python-multipart (its form parser) and uvicorn."""

try:
    import python_multipart  # noqa: F401  (Starlette parses uploads with it, but says so only at the first)
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as error:
    raise MissingExtraError(f"fcnseg serve needs the serve extra: pip install '{EXTRA}'") from error

__all__ = ["EXTRA", "Segmenter", "create_app", "listen", "serve", "url_of"]

STATIC = Path(__file__).with_name("static")
FIELD = "image"
"""The multipart field that carries the image in ``POST /segment``."""

SAMPLES = 4
SAMPLE_SIZE = (96, 128)
"""Built-in synthetic samples (H, W): the demo's data at a size it trains near."""
_SAMPLE_SEED = 3  # the demo draws its train, validation and test sets from seeds 0, 1 and 2

MB = 1_000_000
"""A megabyte, as ``--max-upload-mb`` counts them."""


class UploadError(Exception):
    """An upload refused with an HTTP status and a message that names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Upload(io.BytesIO):
    """Uploaded bytes that ``read_image`` and PIL, which name their source with str() and
    repr() in messages, name by the uploaded file's name."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return repr(self.name)


@dataclass(frozen=True)
class Segmentation:
    image: np.ndarray
    """(H, W, 3) uint8 RGB, as the model saw it."""
    labels: np.ndarray
    """(H, W) uint8 class ids."""
    seconds: float
    """Time of the forward pass, preprocessing and argmax included, waiting for the model not."""


class Segmenter:
    """A model that segments uploaded image files, one forward pass at a time."""

    def __init__(self, model: FCN, name: str = "model", max_pixels: int | None = MAX_PIXELS) -> None:
        if model.num_classes > 256:
            raise ValueError(
                f"{name}: model has {model.num_classes} classes but a palette PNG holds at most 256"
            )
        if model.in_channels != 3:
            raise ValueError(
                f"{name}: model takes {model.in_channels} input channels; the page sends RGB images"
            )
        self.model = model.eval()
        self.name = name
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        # A first pass builds the model's fast twin (fcnseg.infer.fast), so that no request's time includes it.
        predict(self.model, np.zeros((32, 32, 3), np.uint8))

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` answers: the net, its classes with their colours, its preprocessing."""
        meta = getattr(self.model, "meta", {})
        names = list(meta.get("class_names") or [])
        names += [str(i) for i in range(len(names), self.model.num_classes)]
        colours = pascal_palette(self.model.num_classes)
        preprocess = get_preprocessing(preprocessing_of(self.model))
        return {
            "weights": self.name,
            "arch": self.model.config["arch"],
            "widths": list(self.model.config.get("widths") or []),
            "num_classes": self.model.num_classes,
            "classes": [
                {"id": i, "name": names[i], "color": "#{:02x}{:02x}{:02x}".format(*colours[i])}
                for i in range(self.model.num_classes)
            ],
            "preprocess": asdict(preprocess),
            "device": str(next(self.model.parameters()).device),
            "max_pixels": self.max_pixels,
            "outputs": ["segmentation"],
        }

    def segment(self, data: bytes, name: str) -> Segmentation:
        """Decode an uploaded file (refused with ``ImageReadError`` if it is no image or too large)
        and segment it."""
        image = read_image(_Upload(data, name), max_pixels=self.max_pixels)
        with self._lock:
            start = time.perf_counter()
            labels = predict(self.model, image)
            seconds = time.perf_counter() - start
        return Segmentation(image, labels, seconds)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def label_png(labels: np.ndarray) -> bytes:
    """(H, W) class ids as the palette PNG that ``fcnseg predict`` writes."""
    return png_bytes(colorize(labels))


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def outputs(result: Segmentation, num_classes: int) -> dict[str, Any]:
    """The page's views of one result, by name: the label map and each class's share of the pixels."""
    counts = np.bincount(result.labels.ravel(), minlength=num_classes)
    return {
        "segmentation": {
            "labels": _data_url(label_png(result.labels)),
            "shares": (counts / max(result.labels.size, 1)).tolist(),
        }
    }


@cache
def sample_png(index: int) -> bytes:
    """Built-in sample ``index`` (a synthetic image, see ``fcnseg.data.synthetic``) as a PNG file."""
    image, _ = make_sample(sample_seed(_SAMPLE_SEED, index), SAMPLE_SIZE)
    return png_bytes(Image.fromarray(image))


async def _read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 past ``limit`` bytes.

    The rest of a body over the limit is read and dropped, so that the client, still
    sending, gets the answer rather than a reset connection.
    """
    body, size = bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            body += chunk
    if size > limit:
        raise UploadError(
            413,
            f"the upload is {size / MB:.3g} MB, over the {limit / MB:.3g} MB limit (fcnseg serve --max-upload-mb)",
        )
    return bytes(body)


async def _uploaded_file(request: Request, limit: int) -> tuple[bytes, str]:
    """The bytes and file name of the ``image`` field of a multipart upload of at most ``limit`` bytes."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UploadError(
            400,
            f"expected a multipart/form-data upload with the image in the field '{FIELD}', "
            f"got content type {content_type or 'none'!r} (curl -F {FIELD}=@photo.jpg)",
        )
    body = await _read_body(request, limit)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async with Request(request.scope, replay).form(max_files=1) as form:
        upload = form.get(FIELD)
        if not isinstance(upload, UploadFile):
            fields = ", ".join(repr(k) for k in form) or "none"
            kind = "a text value, not a file" if upload is not None else "missing"
            raise UploadError(400, f"the field '{FIELD}' is {kind} (fields sent: {fields})")
        return await upload.read(), upload.filename or "upload"


def create_app(segmenter: Segmenter, max_upload_bytes: int = 50 * MB) -> Starlette:
    """The page at ``/``, ``GET /info``, ``POST /segment``, ``GET /samples/{i}.png`` and ``/static``.

    ``POST /segment`` takes a multipart upload whose field ``image`` holds an image file and
    answers the label map, a palette PNG of the image's size, with the forward time in the
    ``X-Forward-Seconds`` header; with ``?format=json``, JSON: the size, the time and
    :func:`outputs`, plus the image as the model saw it (a PNG data URL) with ``&with_image=1``.
    Bad uploads get 400, uploads over ``max_upload_bytes`` 413, with ``{"error": message}``.
    """
    info = segmenter.info() | {"max_upload_bytes": max_upload_bytes, "samples": SAMPLES}

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def get_info(request: Request) -> Response:
        return JSONResponse(info)

    async def get_sample(request: Request) -> Response:
        number = request.path_params["number"]
        if number >= SAMPLES:
            raise HTTPException(404, f"no sample {number}: samples are 0 to {SAMPLES - 1}")
        return Response(sample_png(number), media_type="image/png")

    async def segment(request: Request) -> Response:
        as_json = request.query_params.get("format") == "json"
        try:
            data, name = await _uploaded_file(request, max_upload_bytes)
            result = await run_in_threadpool(segmenter.segment, data, name)
        except UploadError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        except ImageReadError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        height, width = result.labels.shape
        seconds = f"{result.seconds:.6f}"
        if not as_json:
            png = await run_in_threadpool(label_png, result.labels)
            return Response(png, media_type="image/png", headers={"X-Forward-Seconds": seconds})

        def answer() -> dict[str, Any]:
            body = {"name": name, "width": width, "height": height, "seconds": result.seconds}
            body["outputs"] = outputs(result, segmenter.model.num_classes)
            if request.query_params.get("with_image") == "1":
                body["image"] = _data_url(png_bytes(Image.fromarray(result.image)))
            return body

        return JSONResponse(await run_in_threadpool(answer), headers={"X-Forward-Seconds": seconds})

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/info", get_info),
            Route("/samples/{number:int}.png", get_sample),
            Route("/segment", segment, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={HTTPException: http_error},
    )


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: a free one): a taken port fails before serving,
    and connections made as soon as the URL is printed wait for the server."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port}: {error.strerror or error}; choose another --port"
        ) from None
    sock.listen(2048)  # uvicorn's backlog
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C or SIGTERM, logging each request (not uvicorn's startup)."""
    log_config = {**uvicorn.config.LOGGING_CONFIG}
    log_config["loggers"] = {**log_config["loggers"], "uvicorn.error": {"level": "WARNING"}}
    uvicorn.Server(uvicorn.Config(app, log_config=log_config)).run(sockets=[sock])
