"""The web app of ``fcnseg serve``: a page to try a model, on ``GET /info``, ``POST /predict`` and
``POST /segment``, and ``GET /health``.

One model answers every request, one forward pass at a time: ``predict`` switches the
model's mode and caches its fast twin, which concurrent calls must not interleave, and one
pass already uses every core. Reading uploads and encoding results run beside it; decoding an
image takes its turn at the model, so that one image at a time is decoded.

A crowd, hostile or not, meets bounds rather than a hang or a crash: at most ``max_queue``
uploads are taken in at once (more get 503 with ``Retry-After``), each within a time limit,
with the body's size counted as it streams and the image's pixels from its header before it
is decoded. So memory stays under the model, ``max_queue`` uploads and one image at the pixel
limit with its forward pass, and no input gets a 5xx.

The model is of any task whose page view there is (``Task.serves``): segmentation (label maps),
edges and skeleton (maps in [0, 1]) or detection (boxes). The task predicts, draws the picture and
makes the page's view of a result; the page (``static/``) shows each entry of ``outputs`` in a
response with the view of that name, the task's (``VIEWS`` in ``static/app.js``).
"""

from __future__ import annotations

import base64
import io
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from fcnseg.data.images import MAX_PIXELS, ImageReadError, ImageTooLarge, image_size, read_image
from fcnseg.data.preprocess import get_preprocessing, preprocessing_of
from fcnseg.data.synthetic import make_sample, sample_seed
from fcnseg.errors import MissingExtraError
from fcnseg.infer.detect import MIN_SCORE
from fcnseg.infer.predict import inference_forward
from fcnseg.infer.tiling import MemoryBudgetError
from fcnseg.serve import MAX_QUEUE, TIMEOUT
from fcnseg.tasks import TASKS, get_task
from fcnseg.tasks.common import InferenceOptions

EXTRA = "fcnseg[serve]"
"""What to install for ``fcnseg serve``: Starlette, python-multipart (its form parser) and uvicorn."""

try:
    import anyio
    import uvicorn
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from fcnseg.serve.upload import FIELD, MB, RequestError, parse_upload, read_body
except ImportError as error:
    raise MissingExtraError(f"fcnseg serve needs the serve extra: pip install '{EXTRA}'") from error

__all__ = ["EXTRA", "FIELD", "MB", "Busy", "Predictor", "create_app", "listen", "serve", "url_of"]

STATIC = Path(__file__).with_name("static")

SAMPLES = 4
SAMPLE_SIZE = (96, 128)
"""Built-in synthetic samples (H, W): the demo's data at a size it trains near."""
_SAMPLE_SEED = 3  # the demo draws its train, validation and test sets from seeds 0, 1 and 2

SHOWN = tuple(name for name, task in TASKS.items() if task.serves)
"""The tasks the page shows."""

_T = TypeVar("_T")


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
class Prediction:
    image: np.ndarray
    """(H, W, 3) uint8 RGB, as the model saw it."""
    output: Any
    """The task's prediction (``Task.predict_images``): a label map, a map in [0, 1], detections."""
    seconds: float
    """Time of the forward pass, preprocessing and decoding included, waiting for the model not."""


class Busy(Exception):
    """The server cannot answer now: the model did not come free before a request's time limit, or
    the machine has too little memory free for the pass."""


class Predictor:
    """A model that predicts on uploaded image files, one forward pass at a time, as its task does:
    label maps, edge or skeleton maps, or boxes."""

    def __init__(
        self,
        model: torch.nn.Module,
        name: str = "model",
        max_pixels: int | None = MAX_PIXELS,
        options: InferenceOptions | None = None,
    ) -> None:
        task = model.task
        if task not in SHOWN:
            raise ValueError(f"{name}: a net of the {task} task; fcnseg serve shows {', '.join(SHOWN)}")
        self.task = get_task(task)
        self.options = options or InferenceOptions()
        """How the net runs (precision, backend, calibration): ``fcnseg serve``'s flags."""
        self.task.check_prediction(model, self.options, name)
        if model.in_channels != 3:
            raise ValueError(
                f"{name}: model takes {model.in_channels} input channels; the page sends RGB images"
            )
        self.model = model.eval()
        self.name = name
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        start = time.perf_counter()
        if self.options.backend == "torch":
            # A first pass warms the model up (and builds a segmentation net's fast twin,
            # fcnseg.accel), so that no request's time includes it.
            self._forward(np.zeros((32, 32, 3), np.uint8))
        else:
            # The runtime and the int8 calibration now (a missing extra fails here); a runtime
            # compiles a graph per input size, so the first request of each size builds its own.
            o = self.options
            inference_forward(model, o.precision, o.backend, o.calibration)
        # then a running mean of the time a request holds the model, for Retry-After
        self.seconds = time.perf_counter() - start

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` answers: the net and its task, its preprocessing, and the task's fields
        (``Task.page_info``): its classes with their colours (none for a map), what its view needs."""
        return {
            "weights": self.name,
            "arch": self.model.config["arch"],
            "task": self.task.name,
            "widths": list(self.model.config.get("widths") or []),
            "num_classes": self.model.num_classes,
            "preprocess": asdict(get_preprocessing(preprocessing_of(self.model))),
            "device": str(next(self.model.parameters()).device),
            "backend": self.options.backend,
            "precision": self.options.precision,
            "max_pixels": self.max_pixels,
            "outputs": [self.task.name],
            **self.task.page_info(self.model),
        }

    def _forward(self, image: np.ndarray) -> Any:
        return self.task.predict_images(self.model, image[None], self.options)[0]

    def predict(self, data: bytes, name: str, deadline: float = math.inf) -> Prediction:
        """Decode an uploaded file and run the model on it.

        An image over the pixel limit is refused from its header (:class:`ImageTooLarge`) and one
        that cannot be decoded with :class:`ImageReadError`, whatever the decoder raised; the
        decoding waits for the model, so that one image at a time is decoded. :class:`Busy` when
        the model is not free by ``deadline`` (a ``time.monotonic()``), or the machine has too
        little memory free for the pass now; a pass that has begun runs to its end.
        """
        upload = _Upload(data, name)
        width, height = image_size(upload, max_pixels=self.max_pixels)
        if not self._lock.acquire(timeout=max(0.0, min(deadline - time.monotonic(), threading.TIMEOUT_MAX))):
            raise Busy("the model was not free within the time limit (fcnseg serve --timeout)")
        try:
            start = time.perf_counter()
            image = _decode(upload, self.max_pixels)
            output = self._forward(image)
            seconds = time.perf_counter() - start
            self.seconds += (seconds - self.seconds) / 8
        except (MemoryBudgetError, MemoryError, torch.OutOfMemoryError) as error:
            raise Busy(
                f"too little memory is free now for a pass on {width}x{height} pixels ({error})"
            ) from error
        finally:
            self._lock.release()
        return Prediction(image, output, seconds)

    def picture(self, result: Prediction, min_score: float = MIN_SCORE) -> bytes:
        """The task's picture of a result as a PNG, as ``fcnseg predict`` draws it: the palette label
        map, the grey map, or the image with its boxes of at least ``min_score``."""
        options = InferenceOptions(min_score=min_score)
        return png_bytes(self.task.picture(self.model, result.image, result.output, options))

    def outputs(self, result: Prediction, min_score: float = MIN_SCORE) -> dict[str, Any]:
        """The page's view of a result, under the task's name (``Task.page_view``), its picture as a
        data URL; ``min_score`` picks the boxes shown."""
        picture = _data_url(self.picture(result, min_score))
        options = InferenceOptions(min_score=min_score)
        return {
            self.task.name: self.task.page_view(self.model, result.image, result.output, picture, options)
        }


def _decode(upload: _Upload, max_pixels: int | None) -> np.ndarray:
    """``read_image`` of an upload, whose every failure is the upload's fault: a decoder that meets a
    damaged file may raise what it likes (struct.error, IndexError...), and a client's file must
    never make a 5xx."""
    try:
        return read_image(upload, max_pixels=max_pixels)
    except (ImageReadError, MemoryError):  # the second is the machine's state, not the file's fault
        raise
    except Exception as error:
        raise ImageReadError(f"cannot read image {upload}: {type(error).__name__}: {error}") from error


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@cache
def sample_png(index: int) -> bytes:
    """Built-in sample ``index`` (a synthetic image, see ``fcnseg.data.synthetic``) as a PNG file."""
    image, _ = make_sample(sample_seed(_SAMPLE_SEED, index), SAMPLE_SIZE)
    return png_bytes(Image.fromarray(image))


class _Queue:
    """The uploads taken in (being read, waiting for the model, or running), at most ``capacity``;
    and the thread pool they run their work in, as large."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.taken = capacity, 0
        self.threads = anyio.CapacityLimiter(capacity)

    def enter(self) -> bool:
        if self.taken >= self.capacity:
            return False
        self.taken += 1
        return True

    def leave(self) -> None:
        self.taken -= 1

    async def run(self, work: Callable[..., _T], *args: Any) -> _T:
        return await anyio.to_thread.run_sync(work, *args, limiter=self.threads)


async def _drain(request: Request, deadline: float) -> None:
    """Read and drop what is left of a request's body (until ``deadline``), so that a client still
    sending it gets the answer rather than a reset connection."""
    with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
        try:
            async for _ in request.stream():
                pass
        except ClientDisconnect:  # nothing left to drop, nobody to answer
            pass


def _query_format(request: Request, default: str) -> str:
    value = request.query_params.get("format", default)
    if value not in ("json", "png"):
        raise RequestError(400, f"format must be json or png, got {value!r}")
    return value


def _query_min_score(request: Request) -> float:
    text = request.query_params.get("min_score")
    if text is None:
        return MIN_SCORE
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise RequestError(400, f"min_score must be a number from 0 to 1, got {text!r}")
    return value


def create_app(
    predictor: Predictor,
    max_upload_bytes: int = 50 * MB,
    max_queue: int = MAX_QUEUE,
    timeout: float = TIMEOUT,
) -> Starlette:
    """The page at ``/``, ``GET /info``, ``GET /health``, ``POST /predict``, ``POST /segment``,
    ``GET /samples/{i}.png`` and ``/static``.

    ``POST /predict`` takes a multipart upload whose field ``image`` holds an image file and
    answers JSON: the task, the image's size, the forward time and :meth:`Predictor.outputs`, plus
    the image as the model saw it (a PNG data URL) with ``&with_image=1``; ``?format=png`` answers
    the task's picture (:meth:`Predictor.picture`) instead. ``min_score`` (detection) picks the boxes
    (default :data:`~fcnseg.infer.detect.MIN_SCORE`). ``POST /segment``, for segmentation nets, is
    ``/predict`` answering the label map's PNG unless ``?format=json``. Both give the forward time in
    the ``X-Forward-Seconds`` header.

    Every refusal is JSON, ``{"error": message}``: 400 for a bad request or a file that is no
    image, 413 for an upload over ``max_upload_bytes`` or an image over the pixel limit, 408 for an
    upload still arriving after ``timeout`` seconds, and 503 with ``Retry-After`` when
    ``max_queue`` uploads are in already or the model is not free within ``timeout``.
    """
    info = predictor.info() | {"max_upload_bytes": max_upload_bytes, "samples": SAMPLES}
    queue = _Queue(max_queue)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def get_info(request: Request) -> Response:
        return JSONResponse(info)

    async def get_health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "queued": queue.taken, "max_queue": queue.capacity})

    async def get_sample(request: Request) -> Response:
        number = request.path_params["number"]
        if number >= SAMPLES:
            raise HTTPException(404, f"no sample {number}: samples are 0 to {SAMPLES - 1}")
        return Response(sample_png(number), media_type="image/png")

    def busy(message: str) -> RequestError:
        wait = max(1, math.ceil(queue.taken * predictor.seconds))
        return RequestError(503, f"{message}; retry in {wait} s", {"Retry-After": str(wait)})

    async def answer(request: Request, default_format: str, tasks: tuple[str, ...] = SHOWN) -> Response:
        deadline = time.monotonic() + timeout
        if not queue.enter():
            await _drain(request, deadline)
            error = busy(f"the server is busy: {queue.capacity} uploads are in (fcnseg serve --max-queue)")
            return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)
        try:
            return await respond(request, default_format, tasks, deadline)
        except RequestError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status, headers=error.headers)
        finally:
            queue.leave()

    async def respond(
        request: Request, default_format: str, tasks: tuple[str, ...], deadline: float
    ) -> Response:
        body = await read_body(request, max_upload_bytes, deadline)
        kind = _query_format(request, default_format)
        min_score = _query_min_score(request)
        if predictor.task.name not in tasks:
            raise RequestError(
                400,
                f"POST {request.url.path} answers {' and '.join(tasks)} nets; {predictor.name} is a net "
                f"of the {predictor.task.name} task ({info['arch']}): POST /predict answers every task",
            )
        data, name = await queue.run(parse_upload, body, request.headers.get("content-type", ""))
        del body  # the upload's bytes are in data now
        try:
            result = await queue.run(predictor.predict, data, name, deadline)
        except ImageTooLarge as error:
            raise RequestError(413, str(error)) from None
        except ImageReadError as error:
            raise RequestError(400, str(error)) from None
        except Busy as error:
            raise busy(f"the server is busy: {error}") from None
        headers = {"X-Forward-Seconds": f"{result.seconds:.6f}"}
        if kind == "png":
            png = await queue.run(predictor.picture, result, min_score)
            return Response(png, media_type="image/png", headers=headers)

        def fields() -> dict[str, Any]:
            height, width = result.image.shape[:2]
            fields = {"name": name, "task": predictor.task.name, "width": width, "height": height}
            fields |= {"seconds": result.seconds, "outputs": predictor.outputs(result, min_score)}
            if request.query_params.get("with_image") == "1":
                fields["image"] = _data_url(png_bytes(Image.fromarray(result.image)))
            return fields

        return JSONResponse(await queue.run(fields), headers=headers)

    async def post_predict(request: Request) -> Response:
        return await answer(request, "json")

    async def post_segment(request: Request) -> Response:
        return await answer(request, "png", ("segmentation",))

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/info", get_info),
            Route("/health", get_health),
            Route("/samples/{number:int}.png", get_sample),
            Route("/predict", post_predict, methods=["POST"]),
            Route("/segment", post_segment, methods=["POST"]),
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
    # the multipart parser warns of every malformed upload, which the client is told of already
    quiet = {"uvicorn.error": {"level": "WARNING"}, "python_multipart": {"level": "ERROR"}}
    log_config["loggers"] = {**log_config["loggers"], **quiet}
    uvicorn.Server(uvicorn.Config(app, log_config=log_config)).run(sockets=[sock])
