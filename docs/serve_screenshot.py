"""Takes docs/serve.png: the ``fcnseg serve`` page in headless Chromium, on a built-in sample.

    python docs/serve_screenshot.py fcnseg-demo/model.pt --sample 0 --out docs/serve.png

Needs the test extra and Chromium (``bash tests/install_chromium.sh``); it runs the real
command and page, with the test suite's browser and server helpers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser import chromium  # noqa: E402
from live_server import fcnseg_serve  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WIDTH = 1240


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--sample", type=int, default=0, help="which built-in sample to show")
    parser.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    args = parser.parse_args()
    with fcnseg_serve(args.weights) as url, chromium(WIDTH, 900) as driver:
        driver.get(url)
        state = "return document.body.dataset.state"
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(state) == "ready")
        loaded = "return Array.from(document.querySelectorAll('#samples img')).every(i => i.complete)"
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(loaded))  # the buttons stay put
        driver.find_elements(By.CSS_SELECTOR, "#samples button.sample")[args.sample].click()
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(state) == "done")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.save_screenshot(str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
