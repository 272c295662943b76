"""docs/section3.md and the README's trunk example run as shown: each snippet, in order, prints
exactly the output shown after it."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import torch

from fcnseg.cli import main

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "section3.md"
README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def blocks(text: str | None = None) -> list[tuple[str, str]]:
    return [(kind, body) for kind, body in FENCE.findall(GUIDE.read_text() if text is None else text)]


def run_code(code: str, namespace: dict, source: Path = GUIDE) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(source), "exec"), namespace)
    return out.getvalue()


def readme_section(title: str) -> str:
    """The README's text under ``### title``, up to the next heading."""
    return re.split(r"\n#{2,3} ", README.read_text().split(f"### {title}\n", 1)[1], maxsplit=1)[0]


@pytest.mark.parametrize("title", ["Trunks", "Plain nets and the speed layer"])
def test_readme_examples_print_what_the_readme_shows(title):
    found = blocks(readme_section(title))
    assert [kind for kind, _ in found] == ["python", "text"]
    torch.manual_seed(0)
    assert run_code(found[0][1], {}, README) == found[1][1]


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


def test_trunks_page_snippets_print_what_the_page_shows(monkeypatch):
    from fcnseg.models.registry import BUILDERS

    page = Path(__file__).resolve().parents[1] / "docs" / "trunks.md"
    monkeypatch.setitem(BUILDERS, "tiny-fcn16s", None)  # the page registers it; removed afterwards
    found = blocks(page.read_text())
    namespace: dict = {}
    assert sum(kind == "python" for kind, _ in found) == 4
    for i, (kind, body) in enumerate(found):
        if kind == "python":
            shown = found[i + 1][1] if i + 1 < len(found) and found[i + 1][0] == "text" else ""
            assert run_code(body, namespace, page) == shown, f"snippet {i} of {page.name}:\n{body}"
