"""The manual builds as a site without a warning, and its API reference holds every public name."""

import os
import subprocess
import sys
from pathlib import Path

import fcnseg

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "index.html").read_text().count("doc-heading") > 20


def test_the_reference_documents_every_public_name():
    reference = (ROOT / "docs" / "reference.md").read_text()
    missing = [name for name in fcnseg.__all__ if f"::: {fcnseg._HOMES[name]}.{name}\n" not in reference]
    assert missing == []
