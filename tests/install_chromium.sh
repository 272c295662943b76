#!/usr/bin/env bash
# Installs the browser that the page tests (tests/test_serve_page.py) drive: Debian's chromium and
# chromium-driver, with apt-get, as root or through sudo; does nothing when both are there.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "chromium and chromedriver: installed"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "the page tests need Chromium and its chromedriver (one version) on PATH, and this system has" \
        "no apt-get: install them with its package manager, or run the other tests: python -m pytest -m 'not browser'" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ]; then
    as_root=()
elif command -v sudo >/dev/null; then
    echo "installing chromium and chromium-driver with sudo apt-get"
    as_root=(sudo)
else
    echo "the page tests need Chromium: as root, run apt-get install -y chromium chromium-driver" >&2
    exit 1
fi
"${as_root[@]}" apt-get update -q
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
