"""The manual's examples run as shown: on every page (and the README), each ``python`` block runs,
in order, in one namespace per page, and prints exactly the ``text`` block after it; each
``console`` block that starts with ``$ fcnseg`` runs that command and prints what follows it."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import torch

from fcnseg.cli import main
from fcnseg.models.registry import BUILDERS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def blocks(page: Path) -> list[tuple[str, str]]:
    return FENCE.findall(page.read_text())


def runnable(page: Path) -> bool:
    return any(
        kind == "python" or (kind == "console" and body.startswith("$ fcnseg "))
        for kind, body in blocks(page)
    )


def run_code(code: str, namespace: dict, page: Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(page), "exec"), namespace)
    return out.getvalue()


def run_command(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(shlex.split(command)[2:]) == 0, command
    return out.getvalue()


def test_the_manual_has_examples_to_run():
    """The pages whose examples this file runs: a page that lost its examples would pass silently."""
    names = {page.name for page in PAGES if runnable(page)}
    assert {"README.md", "python-api.md", "speed.md", "detection.md", "section3.md", "trunks.md"} <= names


@pytest.mark.parametrize("page", [page for page in PAGES if runnable(page)], ids=lambda page: page.name)
def test_examples_print_what_the_page_shows(page, caffe_fixtures, monkeypatch):
    monkeypatch.chdir(caffe_fixtures)  # the pages load "fcn8s.caffemodel", a narrow test net
    registered = dict(BUILDERS)
    torch.manual_seed(0)
    found = blocks(page)
    namespace: dict = {}
    try:
        for i, (kind, body) in enumerate(found):
            shown = found[i + 1][1] if i + 1 < len(found) and found[i + 1][0] == "text" else ""
            if kind == "python":
                assert run_code(body, namespace, page) == shown, f"block {i} of {page.name}:\n{body}"
            elif kind == "console" and body.startswith("$ fcnseg "):
                command, _, printed = body.partition("\n")
                assert run_command(command) == printed, f"block {i} of {page.name}: {command}"
    finally:
        BUILDERS.clear()
        BUILDERS.update(registered)  # a page may register nets of its own
