"""The benchmark scripts' shared pieces, and quick runs of the scripts (they write nothing)."""

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from _results import write_section  # noqa: E402


def run_script(name: str, *args: str) -> str:
    """Run ``benchmarks/<name>`` with ``args``; its standard output, after checking it succeeded."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_write_section_replaces_only_its_block(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(
        "# Benchmarks\n\nnotes\n\n<!-- a -->\nold a\n<!-- /a -->\n\n<!-- b -->\nold b\n<!-- /b -->\n"
    )
    write_section("a", "new a", path=path)
    assert path.read_text() == (
        "# Benchmarks\n\nnotes\n\n<!-- a -->\nnew a\n<!-- /a -->\n\n<!-- b -->\nold b\n<!-- /b -->\n"
    )
    write_section("c", "new c", path=path)
    assert path.read_text().endswith("<!-- /b -->\n\n<!-- c -->\nnew c\n<!-- /c -->\n")


def test_write_section_puts_a_new_block_inside_its_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(
        "<!-- speed -->\nhand-written\n<!-- speed:x -->\nx\n<!-- /speed:x -->\n<!-- /speed -->\ntail\n"
    )
    write_section("speed:y", "y", inside="speed", path=path)
    text = path.read_text()
    assert text.index("<!-- speed:x -->") < text.index("<!-- speed:y -->") < text.index("<!-- /speed -->")
    assert "hand-written" in text and text.endswith("<!-- /speed -->\ntail\n")
    write_section("other:z", "z", inside="other", path=tmp_path / "fresh.md")
    assert (
        "<!-- other -->\n<!-- other:z -->\nz\n<!-- /other:z -->\n<!-- /other -->"
        in (tmp_path / "fresh.md").read_text()
    )


def test_section3_study_quick_run(tmp_path):
    out = run_script("section3_study.py", "--quick", "--jobs", "1")
    for heading in ("does sampling speed convergence?", "| FCN-32s + shift-and-stitch x4 | 8 | 16 |"):
        assert heading in out


def test_bench_training_quick_run():
    out = run_script("bench_training.py", "--cases", "demo", "--rounds", "1", "--threads", "1", "--no-write")
    assert "| demo net (4, 8, 16, 32, 32, 64), batch 4, 64x96, Adam | 1 | reach |" in out


def test_edges_table_quick_run():
    out = run_script("edges_table.py", "--quick", "--jobs", "1")
    for row in (
        "| HED (4, 8, 8, 8, 8), 5 steps |",
        "| FSDS (4, 8, 8, 8, 8), 5 steps |",
        "| distance to Sobel edges |",
    ):
        assert row in out
    baselines = [line.split("|")[2:5] for line in out.splitlines() if line.startswith(("| Sobel", "| dist"))]
    assert len(baselines) == 3 and all(0 <= float(cell) <= 1 for row in baselines for cell in row)


def test_detection_table_quick_run():
    out = run_script("detection_table.py", "--quick")
    rows = [
        line.split("|")[2:4] for line in out.splitlines() if line.startswith(("| SSD300", "| the same net"))
    ]
    assert len(rows) == 2 and all(0 <= float(cell) <= 100 for row in rows for cell in row)
    assert "| SSD300 (4, 8, 16, 32, 32, 64), 5 steps |" in out


def test_bench_ssd_quick_run():
    out = run_script("bench_ssd.py", "--quick")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| SSD300 widths")]
    assert {row[2].strip() for row in rows} == {
        "training step",
        "inference",
    }  # (each row: live, then in the table)
    assert all(float(row[6]) < 1e-4 for row in rows)  # the routed convolutions give the same outputs


def test_soak_serve_quick_run():
    """The real server under 4 clients, a quarter of their 40 requests hostile (a 40000x40000 PNG bomb,
    a 60 MB body...): every answer right, no 5xx or dropped connection, alive after, under 3 GiB."""
    out = run_script("soak_serve.py", "--quick")
    row = next(line for line in out.splitlines() if line.startswith("| 40 |"))
    requests, right, errors, dropped = (int(cell) for cell in row.split("|")[1:5])
    assert (requests, right, errors, dropped) == (40, 40, 0, 0)
    assert row.rstrip().endswith("| yes |")
    for kind, status in (("bomb", "413"), ("huge body", "413"), ("garbage", "400"), ("image", "200")):
        assert re.search(rf"^\| {kind} \| \d+ \| {status}: \d+ \|$", out, re.M), kind
