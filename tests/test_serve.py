"""``fcnseg serve``'s HTTP API: /info, /predict and /segment on good and bad uploads for nets of every
task, concurrency, the command itself."""

import base64
import http.client
import io
import json
import socket
import struct
import sys
import threading
import time
import urllib.parse
import uuid
import zlib

import numpy as np
import pytest
import torch
from live_server import fcnseg_serve
from PIL import Image
from starlette.testclient import TestClient
from tiny_nets import side_net, tiny_fcn

import fcnseg
import fcnseg.serve
from fcnseg.cli import main
from fcnseg.data.palette import pascal_palette
from fcnseg.data.synthetic import CLASS_NAMES, make_sample
from fcnseg.infer.detect import MIN_SCORE, detect_images, detection_records, draw_boxes
from fcnseg.serve import app as web
from fcnseg.tasks import get_task
from fcnseg.tasks.edges import grey_map, predict_map

MESSAGE = "fcnseg serve needs the serve extra: pip install 'fcnseg[serve]'"
TINY_SIDES = (4, 8, 8, 16, 16)
TINY_SSD = (4, 8, 8, 16, 16, 16)


@pytest.fixture(scope="module")
def model():
    net = tiny_fcn(num_classes=len(CLASS_NAMES))
    net.meta = {"class_names": list(CLASS_NAMES), "preprocess": "caffe"}
    return net


@pytest.fixture(scope="module")
def nets(model):
    """A net of each task: the tiny FCN, HED, FSDS and SSD300 (random weights, seeded)."""
    torch.manual_seed(0)
    ssd = fcnseg.build_model("ssd300", len(CLASS_NAMES), widths=TINY_SSD).eval()
    with torch.no_grad():  # flatter class scores: the boxes' scores straddle the default min score
        for name, head in ssd.heads.items():
            if name.endswith("_conf"):
                head.weight *= 0.08
    ssd.meta = {"class_names": list(CLASS_NAMES), "preprocess": "caffe"}
    return {
        "segmentation": model,
        "edges": side_net("hed", TINY_SIDES),
        "skeleton": side_net("fsds", TINY_SIDES, seed=1),
        "detection": ssd,
    }


@pytest.fixture(scope="module")
def clients(nets):
    return {
        task: TestClient(web.create_app(web.Predictor(net, f"{task}.pt"), max_upload_bytes=200_000))
        for task, net in nets.items()
    }


@pytest.fixture(scope="module")
def client(clients):
    return clients["segmentation"]


def png(image: np.ndarray | Image.Image) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def sample(seed: int, size: tuple[int, int]) -> np.ndarray:
    return make_sample(seed, size)[0]


def upload(data: bytes, name: str = "x.png") -> dict:
    return {"files": {"image": (name, data, "application/octet-stream")}}


def labels_of(png_data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png_data))
    assert image.mode == "P"
    palette = np.array(image.getpalette()[: 3 * 256], dtype=np.uint8).reshape(-1, 3)
    assert (palette == pascal_palette(256)).all()
    return np.array(image)


def from_data_url(url: str, kind: str = "image/png") -> bytes:
    head, _, data = url.partition(",")
    assert head == f"data:{kind};base64"
    return base64.b64decode(data)


def http_post(url: str, name: str, data: bytes) -> tuple[int, bytes]:
    """POST ``data`` as the file ``name`` in the multipart field ``image``: (status, body)."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return http_request(url, "POST", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def http_request(url: str, method: str = "GET", body: bytes | None = None, headers=None) -> tuple[int, bytes]:
    """One request to the local test server at ``url`` (http://127.0.0.1:PORT/path): (status, body)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, parts.path, body, headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def bomb_png(width: int, height: int) -> bytes:
    """A valid, tiny 1-bit PNG of ``width`` x ``height`` black pixels (its rows of zeros deflate well)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_info_names_the_net_its_classes_colours_and_preprocessing(client):
    info = client.get("/info").json()
    assert (info["weights"], info["arch"], info["num_classes"]) == ("segmentation.pt", "fcn8s", 6)
    assert info["widths"] == [4, 8, 8, 16, 16, 32]
    assert [c["name"] for c in info["classes"]] == list(CLASS_NAMES)
    colours = [tuple(int(c["color"][i : i + 2], 16) for i in (1, 3, 5)) for c in info["classes"]]
    assert colours == [tuple(c) for c in pascal_palette(6)]
    assert info["preprocess"]["name"] == "caffe" and info["preprocess"]["bgr"] is True
    assert info["preprocess"]["mean"] == pytest.approx([104.00698793, 116.66876762, 122.67891434])
    assert info["task"] == "segmentation" and info["outputs"] == ["segmentation"]
    assert info["max_upload_bytes"] == 200_000
    assert "legend" not in info and "min_score" not in info


@pytest.mark.parametrize(
    "task, arch, what",
    [("edges", "hed", "an edge"), ("skeleton", "fsds", "a skeleton (an object's medial axis)")],
)
def test_info_of_a_map_says_what_it_shows_and_its_colour(clients, task, arch, what):
    info = clients[task].get("/info").json()
    assert (info["arch"], info["task"], info["outputs"], info["widths"]) == (
        arch,
        task,
        [task],
        [*TINY_SIDES],
    )
    assert info["classes"] == []  # a map, no class colours
    assert f"probability of {what} at each pixel: white is sure, black is none" in info["legend"]
    assert info["overlay_color"] == "#ff2020"


def test_info_of_a_detector_names_its_classes_and_the_default_min_score(clients):
    info = clients["detection"].get("/info").json()
    assert (info["arch"], info["task"], info["outputs"]) == ("ssd300", "detection", ["detection"])
    assert [c["name"] for c in info["classes"]] == list(CLASS_NAMES)
    assert info["classes"][1]["color"] == "#{:02x}{:02x}{:02x}".format(*pascal_palette(2)[1])
    assert info["min_score"] == MIN_SCORE


def test_info_numbers_classes_that_have_no_name():
    info = web.Predictor(tiny_fcn(num_classes=3)).info()
    assert [c["name"] for c in info["classes"]] == ["0", "1", "2"]


def test_models_the_page_cannot_show_are_refused():
    other = tiny_fcn()
    other.task = "depth"
    with pytest.raises(
        ValueError, match="d.pt: a net of the depth task; fcnseg serve shows segmentation, edges"
    ):
        web.Predictor(other, "d.pt")
    with pytest.raises(ValueError, match="deep.pt: model takes 4 input channels; the page sends RGB images"):
        web.Predictor(fcnseg.build_model("fcn32s", 3, widths=(4, 8, 8, 16, 16, 32), in_channels=4), "deep.pt")
    with pytest.raises(ValueError, match="model has 300 classes but a palette PNG holds at most 256"):
        web.Predictor(fcnseg.build_model("fcn32s", 300, widths=(4, 8, 8, 16, 16, 32)))


def test_segment_answers_the_label_png_of_the_images_size(client, model):
    image = sample(1, (37, 53))
    response = client.post("/segment", **upload(png(image)))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    labels = labels_of(response.content)
    assert labels.shape == (37, 53)
    assert (labels == fcnseg.predict(model, image)).all()
    assert len(np.unique(labels)) > 1  # a map that could be wrong
    assert float(response.headers["x-forward-seconds"]) > 0


def test_segment_json_has_the_labels_shares_and_time(client, model):
    image = sample(2, (40, 30))
    response = client.post("/segment?format=json", **upload(png(image), "shapes.png"))
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["width"], body["height"]) == ("shapes.png", 30, 40)
    assert body["seconds"] > 0 and "image" not in body
    labels = labels_of(from_data_url(body["outputs"]["segmentation"]["labels"]))
    assert (labels == fcnseg.predict(model, image)).all()
    shares = body["outputs"]["segmentation"]["shares"]
    assert shares == pytest.approx(np.bincount(labels.ravel(), minlength=6) / labels.size)
    with_image = client.post("/segment?format=json&with_image=1", **upload(png(image))).json()
    assert (np.array(Image.open(io.BytesIO(from_data_url(with_image["image"])))) == image).all()


def test_predict_on_a_segmentation_net_answers_as_segment_json(client, model):
    image = sample(2, (40, 30))
    body = client.post("/predict", **upload(png(image), "shapes.png")).json()
    assert (body["task"], body["width"], body["height"]) == ("segmentation", 30, 40)
    assert body["outputs"] == client.post("/segment?format=json", **upload(png(image))).json()["outputs"]
    as_png = client.post("/predict?format=png", **upload(png(image)))
    assert (labels_of(as_png.content) == fcnseg.predict(model, image)).all()


@pytest.mark.parametrize("task", ["edges", "skeleton"])
def test_a_map_is_answered_in_grey_at_the_images_size(clients, nets, task):
    image = sample(3, (37, 53))
    expected = grey_map(predict_map(nets[task], image))
    assert expected.shape == (37, 53) and expected.min() < expected.max()  # a map that could be wrong
    response = clients[task].post("/predict", **upload(png(image), "shapes.png"))
    assert response.status_code == 200 and float(response.headers["x-forward-seconds"]) > 0
    body = response.json()
    assert (body["name"], body["task"], body["width"], body["height"]) == ("shapes.png", task, 53, 37)
    assert list(body["outputs"]) == [task]
    shown = Image.open(io.BytesIO(from_data_url(body["outputs"][task]["map"])))
    assert shown.mode == "L" and (np.array(shown) == expected).all()
    as_png = clients[task].post("/predict?format=png", **upload(png(image)))
    assert as_png.headers["content-type"] == "image/png"
    assert (np.array(Image.open(io.BytesIO(as_png.content))) == expected).all()


def test_a_detector_answers_its_boxes_in_the_image_with_classes_and_scores(clients, nets):
    image = sample(4, (45, 67))
    found = detect_images(nets["detection"], [image])[0]
    scores = np.sort(found["scores"])
    threshold = round(float(scores[len(scores) // 2]), 3)  # about half the boxes pass
    kept = found["scores"] >= threshold
    assert 0 < kept.sum() < len(scores)
    response = clients["detection"].post(f"/predict?min_score={threshold}", **upload(png(image), "s.png"))
    assert response.status_code == 200
    body = response.json()
    assert (body["task"], body["width"], body["height"]) == ("detection", 67, 45)
    view = body["outputs"]["detection"]
    assert view["min_score"] == threshold
    boxes = view["detections"]
    assert len(boxes) == kept.sum()
    assert boxes == detection_records({k: v[kept] for k, v in found.items()}, CLASS_NAMES)
    for box in boxes:
        x0, y0, x1, y1 = box["box"]
        assert 0 <= x0 <= x1 <= 67 and 0 <= y0 <= y1 <= 45
        assert box["score"] >= threshold and box["class"] == CLASS_NAMES[box["label"]] != "background"
    assert [b["score"] for b in boxes] == sorted((b["score"] for b in boxes), reverse=True)
    assert view["counts"] == np.bincount([b["label"] for b in boxes], minlength=len(CLASS_NAMES)).tolist()
    drawn = np.array(Image.open(io.BytesIO(from_data_url(view["drawn"]))))
    expected = np.array(draw_boxes(image, found, CLASS_NAMES, threshold))
    assert drawn.shape == image.shape and (drawn == expected).all() and (drawn != image).any()


def test_a_detectors_picture_draws_the_boxes_from_the_default_min_score(clients, nets):
    image = sample(5, (50, 40))
    answer = clients["detection"].post("/predict?format=png", **upload(png(image)))
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    found = detect_images(nets["detection"], [image])[0]
    assert (found["scores"] >= MIN_SCORE).any() and (found["scores"] < MIN_SCORE).any()
    expected = draw_boxes(image, found, CLASS_NAMES, MIN_SCORE)
    assert (np.array(Image.open(io.BytesIO(answer.content))) == np.array(expected)).all()
    body = clients["detection"].post("/predict", **upload(png(image))).json()
    assert body["outputs"]["detection"]["min_score"] == MIN_SCORE
    assert len(body["outputs"]["detection"]["detections"]) == (found["scores"] >= MIN_SCORE).sum()


@pytest.mark.parametrize("task, arch", [("edges", "hed"), ("skeleton", "fsds"), ("detection", "ssd300")])
def test_segment_refuses_other_tasks_and_names_predict(clients, task, arch):
    response = clients[task].post("/segment", **upload(png(sample(6, (20, 20)))))
    assert response.status_code == 400
    assert response.json()["error"] == (
        f"POST /segment answers segmentation nets; {task}.pt is a net of the {task} task ({arch}): "
        "POST /predict answers every task"
    )


@pytest.mark.parametrize(
    "query, message",
    [
        ("format=jpeg", "format must be json or png, got 'jpeg'"),
        ("min_score=high", "min_score must be a number from 0 to 1, got 'high'"),
        ("min_score=1.5", "min_score must be a number from 0 to 1, got '1.5'"),
        ("min_score=nan", "min_score must be a number from 0 to 1, got 'nan'"),
    ],
)
def test_bad_query_values_are_refused_by_name(clients, query, message):
    response = clients["detection"].post(f"/predict?{query}", **upload(png(sample(7, (20, 20)))))
    assert response.status_code == 400 and response.json() == {"error": message}


def test_segment_reads_any_image_upright(client, model):
    image = sample(3, (20, 32))
    grey = np.array(Image.fromarray(image).convert("L"))
    response = client.post("/segment", **upload(png(grey)))
    assert (labels_of(response.content) == fcnseg.predict(model, np.repeat(grey[..., None], 3, 2))).all()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown turned 90 degrees clockwise
    jpeg = io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG", exif=exif)
    assert labels_of(client.post("/segment", **upload(jpeg.getvalue(), "turned.jpg")).content).shape == (
        32,
        20,
    )


def test_samples_are_pngs(client):
    image = Image.open(io.BytesIO(client.get("/samples/0.png").content))
    assert image.size == web.SAMPLE_SIZE[::-1] and image.mode == "RGB"
    assert client.get("/samples/1.png").content != client.get("/samples/0.png").content
    missing = client.get(f"/samples/{web.SAMPLES}.png")
    assert missing.status_code == 404 and "no sample" in missing.json()["error"]


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert "http://" not in page.text + client.get("/static/app.js").text  # nothing from the network


def truncated() -> bytes:
    data = png(sample(4, (30, 30)))
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "not an image": (
        upload(b"just some notes\n", "notes.png"),
        400,
        "cannot read image notes.png: cannot identify",
    ),
    "empty": (upload(b"", "empty.jpg"), 400, "cannot read image empty.jpg"),
    "truncated": (upload(truncated(), "cut.png"), 400, "cannot read image cut.png"),
    "too many pixels": (
        upload(bomb_png(13_400, 13_400), "bomb.png"),
        400,
        ("cannot read image bomb.png", "--max-megapixels"),
    ),
    "over the size limit": (
        upload(bytes(300_000)),
        413,
        "0.3 MB, over the 0.2 MB limit (fcnseg serve --max-upload-mb)",
    ),
    "no image field": (
        {"files": {"picture": ("x.png", b"..")}},
        400,
        "the field 'image' is missing (fields sent: 'picture')",
    ),
    "text, not a file": (
        {"files": {"image": (None, "x.png")}},
        400,
        "the field 'image' is a text value, not a file",
    ),
    "not multipart": (
        {"content": b"\x89PNG...", "headers": {"content-type": "image/png"}},
        400,
        "expected a multipart",
    ),
    "two files": ({"files": [("image", ("a.png", b"a")), ("image", ("b.png", b"b"))]}, 400, "Too many files"),
}


@pytest.mark.parametrize("request_args, status, message", BAD_UPLOADS.values(), ids=BAD_UPLOADS)
@pytest.mark.parametrize("task, route", [("segmentation", "/segment"), ("edges", "/predict")])
def test_bad_uploads_are_refused_by_name_and_the_server_goes_on(
    clients, task, route, request_args, status, message
):
    client = clients[task]
    response = client.post(route, **request_args)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert all(
        part in response.json()["error"] for part in ((message,) if isinstance(message, str) else message)
    )
    image = sample(5, (24, 24))
    again = client.post(f"{route}?format=png", **upload(png(image)))
    assert again.status_code == 200 and Image.open(io.BytesIO(again.content)).size == (24, 24)


def test_an_upload_without_length_is_measured_as_it_comes(client):
    chunks = (bytes(50_000) for _ in range(5))  # sent chunked: no Content-Length to check first
    response = client.post(
        "/segment", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert response.status_code == 413 and "over the 0.2 MB limit" in response.json()["error"]


def test_pixel_limit_is_the_servers(model):
    small = TestClient(web.create_app(web.Predictor(model, max_pixels=500)))
    refused = small.post("/segment", **upload(png(sample(6, (20, 30))), "big.png"))
    assert (
        refused.status_code == 400
        and "big.png: 30x20 = 0.0006 MP is over the 0.0005 MP limit" in refused.text
    )
    assert small.post("/segment", **upload(png(sample(6, (20, 25))))).status_code == 200


@pytest.mark.parametrize("task", ["segmentation", "edges", "detection"])
def test_concurrent_requests_take_turns_on_the_model(nets, task, monkeypatch):
    """Several threads at once: the model runs one request at a time, and each gets its own answer."""
    active, most, lock = 0, 0, threading.Lock()
    kind = type(get_task(task))  # its predict_images runs the net
    forward = kind.predict_images

    def watched(*args, **kwargs):
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.02)  # long enough for the others to try to come in
        try:
            return forward(*args, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(kind, "predict_images", watched)
    client = TestClient(web.create_app(web.Predictor(nets[task])))
    images = [sample(10 + i, (16 + 3 * i, 40 - 2 * i)) for i in range(6)]
    answers: list = [None] * len(images)
    start = threading.Barrier(len(images))

    def post(i):
        start.wait()
        answers[i] = client.post("/predict?format=png&min_score=0", **upload(png(images[i]), f"{i}.png"))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1
    for image, answer in zip(images, answers, strict=True):
        alone = client.post("/predict?format=png&min_score=0", **upload(png(image)))
        assert answer.status_code == 200 and answer.content == alone.content
        if task == "segmentation":
            assert (labels_of(answer.content) == fcnseg.predict(nets[task], image)).all()


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    return fcnseg.save_checkpoint(model, tmp_path_factory.mktemp("serve") / "tiny.pt")


def test_the_command_serves_concurrent_and_bad_requests_over_http(weights, model):
    """The real server: good and bad uploads at once, each answered with its own result."""
    images = {f"{i}.png": sample(20 + i, (20 + 5 * i, 33 - i)) for i in range(6)}
    requests = {name: png(image) for name, image in images.items()} | {
        "bad.png": b"no image",
        "cut.png": truncated(),
    }
    answers: dict = {}
    start = threading.Barrier(len(requests))
    with fcnseg_serve(weights) as url:

        def post(name):
            start.wait()
            answers[name] = http_post(url + "segment", name, requests[name])

        threads = [threading.Thread(target=post, args=(name,)) for name in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        status, body = http_request(url + "info")
        assert status == 200
        info = json.loads(body)
    assert info["weights"] == "tiny.pt" and [c["name"] for c in info["classes"]] == list(CLASS_NAMES)
    for name, image in images.items():
        status, body = answers[name]
        assert status == 200, body
        assert (labels_of(body) == fcnseg.predict(model, image)).all(), name
    for name in ("bad.png", "cut.png"):
        status, body = answers[name]
        assert status == 400 and f"cannot read image {name}" in json.loads(body)["error"]


def test_a_taken_port_is_refused_before_serving(weights, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(weights), "--port", str(port)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"fcnseg serve: error: cannot listen on 127.0.0.1:{port}: ")
    assert error.endswith("choose another --port")


@pytest.mark.parametrize("module", ["starlette", "uvicorn", "python_multipart"])
def test_without_the_extra_the_command_names_it_and_exits_2(module, weights, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, name, None)  # what an install without the extra looks like
    monkeypatch.delitem(sys.modules, "fcnseg.serve.app")
    monkeypatch.delattr(fcnseg.serve, "app")
    assert main(["serve", str(weights)]) == 2
    assert capsys.readouterr().err.strip() == f"fcnseg serve: error: {MESSAGE}"
