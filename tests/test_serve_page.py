"""The ``fcnseg serve`` page end to end: a real headless Chromium on the real command's server.

Without Chromium these tests fail and say how to install it (``pytest -m 'not browser'``
deselects them); they are never skipped, so that a run without a browser cannot pass for one with.
"""

import base64
import io
import re

import numpy as np
import pytest
import torch
from browser import INSTALL, chromium, chromium_paths
from live_server import fcnseg_serve
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from tiny_nets import side_net, tiny_fcn

import fcnseg
from fcnseg.data.palette import pascal_palette
from fcnseg.data.synthetic import CLASS_NAMES, make_sample
from fcnseg.infer.detect import MIN_SCORE, detect_images
from fcnseg.infer.overlay import overlay
from fcnseg.serve.app import SAMPLE_SIZE
from fcnseg.tasks.edges import grey_map, predict_map, red_overlay

pytestmark = pytest.mark.browser

UPLOAD_LIMIT_MB = 0.05


IMAGE = make_sample(7, (45, 67))[0]
"""The upload: an odd size, so that a transposed or cropped result shows."""


@pytest.fixture(scope="module")
def model():
    """A tiny net whose scores are levelled so that IMAGE gets several classes, 30% background."""
    net = tiny_fcn(num_classes=len(CLASS_NAMES))
    net.meta = {"class_names": list(CLASS_NAMES), "preprocess": "caffe"}
    x = fcnseg.preprocess(IMAGE, "caffe")[None]
    with torch.no_grad():
        net.score_pool3.bias -= net(x)[0].mean((1, 2))
        scores = net(x)[0]
        net.score_pool3.bias[0] += torch.quantile((scores[1:].max(0).values - scores[0]).flatten(), 0.3)
    return net


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("page")


@pytest.fixture(scope="module")
def url(model, folder):
    weights = fcnseg.save_checkpoint(model, folder / "tiny.pt")
    with fcnseg_serve(weights, "--max-upload-mb", str(UPLOAD_LIMIT_MB)) as address:
        yield address


@pytest.fixture(scope="module")
def driver():
    if chromium_paths() is None:
        pytest.fail(INSTALL, pytrace=False)
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(driver, url):
    driver.get(url)
    wait_for(driver, "ready")
    return driver


def wait_for(driver, *states: str) -> str:
    """Wait until the page's state (``document.body.dataset.state``) is one of ``states``."""
    read = "return document.body.dataset.state"
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(read) in states)
    return driver.execute_script(read)


def choose(driver, path) -> None:
    """Choose a file in the page's file input; its state says when the page has shown the result."""
    driver.execute_script("document.body.dataset.state = 'choosing'")
    driver.find_element(By.ID, "file").send_keys(str(path))


def pixels(driver, selector: str) -> np.ndarray:
    """A canvas's or an image's pixels, (H, W, 3) uint8."""
    width, height, values = driver.execute_script(
        "let c = document.querySelector(arguments[0]);"
        "if (c instanceof HTMLImageElement) {"
        "  const image = c; c = document.createElement('canvas');"
        "  c.width = image.naturalWidth; c.height = image.naturalHeight; c.getContext('2d').drawImage(image, 0, 0);"
        "}"
        "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];",
        selector,
    )
    return np.array(values, dtype=np.uint8).reshape(height, width, 4)[..., :3]


def set_opacity(driver, percent: int) -> None:
    driver.execute_script(
        "const s = document.querySelector('.opacity-slider'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'));",
        percent,
    )


def download(driver) -> bytes:
    """The bytes behind the page's download link."""
    encoded = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.querySelector('.download').href).then(r => r.arrayBuffer()).then(b => {"
        "  let s = ''; new Uint8Array(b).forEach(x => s += String.fromCharCode(x)); done(btoa(s)); });"
    )
    return base64.b64decode(encoded)


def test_an_upload_shows_image_overlay_label_map_legend_and_time(page, model, folder):
    image = IMAGE
    Image.fromarray(image).save(folder / "shapes.png")
    labels = fcnseg.predict(model, image)
    counts = np.bincount(labels.ravel(), minlength=len(CLASS_NAMES))
    assert (counts > 0).sum() >= 4 and 0.2 < counts[0] / labels.size < 0.4  # a test that can fail

    choose(page, folder / "shapes.png")
    assert wait_for(page, "done", "error") == "done", page.find_element(By.ID, "status").text

    names = [e.text for e in page.find_elements(By.CSS_SELECTOR, ".legend td.name")]
    assert names == list(CLASS_NAMES)
    shares = [e.text for e in page.find_elements(By.CSS_SELECTOR, ".legend td.share")]
    assert shares == [f"{100 * c / labels.size:.1f}%" for c in counts]
    status = page.find_element(By.ID, "status").text
    assert re.fullmatch(r"shapes\.png: 67 × 45 pixels, forward pass [\d.]+ (ms|s) on cpu", status), status
    assert "fcn8s, segmentation, 6 classes, preprocessing caffe" in page.find_element(By.ID, "model").text

    assert (pixels(page, "#image") == image).all()
    shown = pixels(page, ".overlay")
    assert shown.shape == image.shape  # the upload's size
    background = labels == 0
    assert (shown[background] == image[background]).all()
    assert np.abs(shown.astype(int) - overlay(image, labels, alpha=0.5)).max() <= 2  # 8-bit blending
    set_opacity(page, 100)
    assert (pixels(page, ".overlay")[~background] == pascal_palette(256)[labels[~background]]).all()
    set_opacity(page, 0)
    assert (pixels(page, ".overlay") == image).all()

    size = page.execute_script(
        "const i = document.querySelector('img.labels'); return [i.naturalWidth, i.naturalHeight];"
    )
    assert size == [67, 45]
    link = page.find_element(By.CSS_SELECTOR, ".download")
    assert link.get_attribute("download") == "shapes_labels.png"
    downloaded = Image.open(io.BytesIO(download(page)))
    assert downloaded.mode == "P" and (np.array(downloaded) == labels).all()


def test_an_image_the_browser_cannot_read_is_shown_as_the_server_read_it(page, model, folder):
    image = make_sample(8, (30, 41))[0]
    Image.fromarray(image).save(folder / "scan.tif")  # TIFF: Pillow reads it, Chromium does not
    choose(page, folder / "scan.tif")
    assert wait_for(page, "done", "error") == "done", page.find_element(By.ID, "status").text
    assert (pixels(page, "#image") == image).all()
    assert pixels(page, ".overlay").shape == image.shape


def test_a_sample_is_one_click(page):
    page.execute_script("document.body.dataset.state = 'choosing'")
    page.find_element(By.CSS_SELECTOR, "#samples button.sample").click()
    assert wait_for(page, "done", "error") == "done"
    assert pixels(page, ".overlay").shape[:2] == SAMPLE_SIZE
    assert page.find_element(By.ID, "status").text.startswith("sample-0.png: 128 × 96 pixels")


def test_bad_uploads_are_reported_and_the_page_goes_on(page, folder):
    (folder / "notes.png").write_text("these are notes, not an image\n")
    choose(page, folder / "notes.png")
    assert wait_for(page, "done", "error") == "error"
    status = page.find_element(By.ID, "status")
    assert status.text == "cannot read image notes.png: cannot identify image file 'notes.png'"
    assert not page.find_element(By.ID, "result").is_displayed()

    (folder / "big.png").write_bytes(bytes(60_000))
    choose(page, folder / "big.png")
    assert wait_for(page, "done", "error") == "error"
    assert (
        status.text == "big.png is 0.06 MB, over the server's limit of 0.05 MB (fcnseg serve --max-upload-mb)"
    )

    Image.fromarray(make_sample(9, (20, 20))[0]).save(folder / "fine.png")
    choose(page, folder / "fine.png")
    assert wait_for(page, "done", "error") == "done"
    assert page.find_element(By.ID, "result").is_displayed()


def test_an_edge_net_shows_its_map_overlay_and_what_white_means(driver, folder):
    """A HED checkpoint: the page shows the grey map at the upload's size, the map in red over the
    image at the slider's opacity, and a legend that says what the grey levels are."""
    hed = side_net("hed", (4, 8, 8, 16, 16), seed=3)
    hed.meta = {"preprocess": "caffe", "task": "edges"}
    grey = grey_map(predict_map(hed, IMAGE))
    assert grey.min() < 64 and grey.max() > 192  # a map whose overlay could be wrong
    Image.fromarray(IMAGE).save(folder / "shapes.png")
    with fcnseg_serve(fcnseg.save_checkpoint(hed, folder / "hed.pt")) as address:
        driver.get(address)
        wait_for(driver, "ready")
        assert "hed, edges, preprocessing caffe" in driver.find_element(By.ID, "model").text
        choose(driver, folder / "shapes.png")
        assert wait_for(driver, "done", "error") == "done", driver.find_element(By.ID, "status").text
        status = driver.find_element(By.ID, "status").text

        size = driver.execute_script(
            "const i = document.querySelector('img.map'); return [i.naturalWidth, i.naturalHeight];"
        )
        assert size == [67, 45]  # the upload's
        assert (pixels(driver, "img.map") == grey[..., None]).all()
        legend = driver.find_element(By.CSS_SELECTOR, ".legend-text").text
        assert "probability of an edge at each pixel: white is sure, black is none" in legend
        expected = red_overlay(IMAGE, grey / 255, alpha=0.5)
        assert np.abs(pixels(driver, ".overlay").astype(int) - expected).max() <= 2  # 8-bit blending
        set_opacity(driver, 0)
        assert (pixels(driver, ".overlay") == IMAGE).all()
        link = driver.find_element(By.CSS_SELECTOR, ".download")
        assert link.get_attribute("download") == "shapes_edges.png"
    assert re.fullmatch(r"shapes\.png: 67 × 45 pixels, forward pass [\d.]+ (ms|s) on cpu", status), status


def test_a_detector_shows_its_boxes_counts_them_and_says_how_many(driver, folder):
    """An SSD checkpoint: the page shows the boxes of the default min score drawn at
    the upload's size, counts them per class, and says how many it found in the status line."""
    torch.manual_seed(0)
    ssd = fcnseg.build_model("ssd300", len(CLASS_NAMES), widths=(4, 8, 8, 16, 16, 16)).eval()
    with torch.no_grad():  # flatter class scores: some boxes score above the default min score, some below
        for name, head in ssd.heads.items():
            if name.endswith("_conf"):
                head.weight *= 0.08
    ssd.meta = {"class_names": list(CLASS_NAMES), "preprocess": "caffe"}
    found = detect_images(ssd, [IMAGE])[0]
    shown = found["scores"] >= MIN_SCORE
    assert 0 < shown.sum() < len(shown)  # the min score picks some of the boxes
    Image.fromarray(IMAGE).save(folder / "shapes.png")
    with fcnseg_serve(fcnseg.save_checkpoint(ssd, folder / "ssd.pt")) as address:
        driver.get(address)
        wait_for(driver, "ready")
        choose(driver, folder / "shapes.png")
        assert wait_for(driver, "done", "error") == "done", driver.find_element(By.ID, "status").text
        status = driver.find_element(By.ID, "status").text
        size = driver.execute_script(
            "const i = document.querySelector('img.drawn'); return [i.naturalWidth, i.naturalHeight];"
        )
        counts = [int(cell.text) for cell in driver.find_elements(By.CSS_SELECTOR, ".legend td.count")]
    assert size == [67, 45]
    expected = np.bincount(found["labels"][shown], minlength=len(CLASS_NAMES))[1:].tolist()
    assert counts == expected
    boxes = f"{shown.sum()} box{'' if shown.sum() == 1 else 'es'} of score ≥ {MIN_SCORE:.2f}"
    assert re.fullmatch(
        rf"shapes\.png: 67 × 45 pixels, forward pass [\d.]+ (ms|s) on cpu, {boxes}", status
    ), status


NARROW = 400
"""A phone's width, in CSS pixels."""


@pytest.fixture
def narrow_page(driver, url):
    """The page in a window :data:`NARROW` pixels wide; the window is as wide as before after."""
    before = driver.get_window_size()
    driver.set_window_size(NARROW, before["height"])
    try:
        driver.get(url)
        wait_for(driver, "ready")
        yield driver
    finally:
        driver.set_window_size(before["width"], before["height"])


def overflow(driver) -> tuple[int, int]:
    """The page's width and the window's: a wider page scrolls sideways."""
    return tuple(driver.execute_script("return [document.documentElement.scrollWidth, innerWidth]"))


def test_the_page_fits_a_narrow_window_with_its_panels_stacked(narrow_page, folder):
    assert narrow_page.execute_script("return innerWidth") == NARROW
    width, window = overflow(narrow_page)
    assert width <= window, f"the empty page is {width} px wide in a {window} px window"

    Image.fromarray(IMAGE).save(folder / "shapes.png")
    choose(narrow_page, folder / "shapes.png")
    assert wait_for(narrow_page, "done", "error") == "done"
    width, window = overflow(narrow_page)
    assert width <= window, f"the page with a result is {width} px wide in a {window} px window"
    boxes = narrow_page.execute_script(
        "return [...document.querySelectorAll('#result .panel, #result .legend-box')]"
        ".map(e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right]; })"
    )
    assert len(boxes) == 4  # image, overlay, label map, classes
    lefts, tops, rights = zip(*boxes, strict=True)
    assert len(set(lefts)) == 1 and list(tops) == sorted(set(tops))  # one column, top to bottom
    assert max(rights) <= NARROW


def test_the_page_documents_the_http_api(page):
    text = page.find_element(By.ID, "api").text
    for route in ("POST /predict", "POST /segment", "GET /info", "GET /health"):
        assert route in text, route
    example = page.find_element(By.CSS_SELECTOR, "#api pre").text
    assert f"curl -F image=@photo.jpg {page.current_url}predict" in example
