"""docs/section3.md runs as shown: each snippet, in order, prints exactly the output the guide shows."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import torch

from fcnseg.cli import main

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "section3.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def blocks() -> list[tuple[str, str]]:
    return [(kind, body) for kind, body in FENCE.findall(GUIDE.read_text())]


def run_code(code: str, namespace: dict) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(GUIDE), "exec"), namespace)
    return out.getvalue()


def test_guide_snippets_print_what_the_guide_shows():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        found = blocks()
        assert sum(kind == "python" for kind, _ in found) >= 8
        namespace: dict = {}
        for i, (kind, body) in enumerate(found):
            if kind == "python":
                printed = run_code(body, namespace)
                shown = found[i + 1][1] if i + 1 < len(found) and found[i + 1][0] == "text" else ""
                assert printed == shown, f"snippet {i} of {GUIDE.name}:\n{body}"
            elif kind == "console":
                command, _, shown = body.partition("\n")
                assert command.startswith("$ fcnseg ")
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    assert main(shlex.split(command)[2:]) == 0
                assert out.getvalue() == shown, command
    finally:
        torch.set_num_threads(threads)
