"""A headless Chromium driven by Selenium: the system's ``chromium`` and ``chromedriver``, never a downloaded one."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

INSTALL = (
    "the page tests drive a real Chromium, and there is none: install it and its driver with "
    "'bash tests/install_chromium.sh' (Debian's chromium and chromium-driver, through apt-get), or put "
    "'chromium' and 'chromedriver' of one version on PATH; or deselect these tests: "
    "python -m pytest -m 'not browser'"
)

FLAGS = (
    "--headless",
    "--no-sandbox",  # Chromium refuses to run as root with its sandbox
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--force-color-profile=srgb",
    "--hide-scrollbars",
    # No network here: these keep Chromium from trying (and logging each refused connection).
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
)


def chromium_paths() -> tuple[str, str] | None:
    """The browser and its driver, or None when either is not installed."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator:
    """A Selenium WebDriver of a fresh headless Chromium (its own profile), quit after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError(INSTALL)
    browser, driver_path = paths
    with tempfile.TemporaryDirectory(prefix="fcnseg-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
        try:
            yield driver
        finally:
            driver.quit()
