"""``fcnseg serve`` under load: clients at once, a quarter of their requests hostile, on the real command.

The server is ``fcnseg serve`` in a subprocess (its defaults: 50 MB uploads, 179 MP images) with
the demo's narrow FCN-8s (random weights: the work is the same). Each client posts to
``/segment`` on a fresh connection, one request after another, from a shared shuffled list:
synthetic images of 256 to 512 px a side, and in equal numbers of the rest, hostile uploads:
random bytes, a PNG cut in half, a 40000x40000 PNG (a decompression bomb of about 0.2 MB) and a
60 MB body. Every image must come back as a palette PNG of its size, every hostile upload as a
JSON 4xx; a 5xx, a dropped connection or another answer is a failure, and so is a server that
does not answer ``GET /health`` and one more image after, or whose peak memory reaches 3 GiB.
Latency is from sending the request to the last byte of the answer; peak memory is the server's
``VmHWM`` (peak resident set) at the end. The exit status is 1 on any failure. The section
``serve-load`` of ``benchmarks/RESULTS.md`` is replaced.

    python benchmarks/soak_serve.py              # 240 requests, 8 clients, about 3 minutes
    python benchmarks/soak_serve.py --no-write   # print only
    python benchmarks/soak_serve.py --quick      # 40 requests, 4 clients; print only
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import io
import json
import os
import queue
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _results import machine, write_section
from PIL import Image

import fcnseg
from fcnseg.data.synthetic import make_sample

WIDTHS = (4, 8, 16, 32, 32, 64)
"""The demo's narrow FCN-8s."""
HOSTILE = ("garbage", "truncated", "bomb", "huge body")
MAX_RSS = 3 * 2**30
"""The most the server may use, in bytes."""
URL_LINE = re.compile(r"^fcnseg serve: .* at (http://127\.0\.0\.1:\d+/)  \(Ctrl-C to stop\)$", re.M)


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: rows of zeros deflate a thousandfold."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@dataclass
class Request:
    kind: str  # "image" or one of HOSTILE
    name: str
    data: bytes
    size: tuple[int, int] | None = None  # (width, height) of an image


@dataclass
class Answer:
    request: Request
    status: int | None  # None: the connection dropped
    seconds: float
    problem: str | None  # why the answer is wrong, if it is


def requests_of(count: int, hostile_share: float, seed: int) -> list[Request]:
    """``count`` requests, ``hostile_share`` of them hostile (the four kinds in turn), shuffled."""
    rng = random.Random(seed)
    hostile = round(count * hostile_share)
    bomb, huge = bomb_png(40_000, 40_000), bytes(60_000_000)
    whole = png(make_sample(seed, (64, 64))[0])
    made = []
    for i in range(count - hostile):
        height, width = rng.randint(256, 512), rng.randint(256, 512)
        made.append(
            Request("image", f"{i}.png", png(make_sample(seed + i, (height, width))[0]), (width, height))
        )
    for i in range(hostile):
        kind = HOSTILE[i % len(HOSTILE)]
        data = {
            "garbage": lambda: rng.randbytes(rng.randint(1, 100_000)),
            "truncated": lambda: whole[: len(whole) // 2],
            "bomb": lambda: bomb,
            "huge body": lambda: huge,
        }[kind]()
        made.append(Request(kind, f"hostile-{i}.png", data))
    rng.shuffle(made)
    return made


def post(url: str, request: Request) -> Answer:
    """POST ``request`` to ``url`` as the multipart field ``image``, and judge the answer."""
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{request.name}"\r\n\r\n'
    body = head.encode() + request.data + f"\r\n--{boundary}--\r\n".encode()
    host, port = url.split("//")[1].rstrip("/").split(":")
    start = time.perf_counter()
    connection = http.client.HTTPConnection(host, int(port), timeout=300)
    try:
        connection.request(
            "POST", "/segment", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        response = connection.getresponse()
        status, content_type, content = response.status, response.getheader("content-type"), response.read()
    except (OSError, http.client.HTTPException) as error:
        return Answer(request, None, time.perf_counter() - start, f"dropped: {type(error).__name__}: {error}")
    finally:
        connection.close()
    seconds = time.perf_counter() - start
    return Answer(request, status, seconds, judge(request, status, content_type, content))


def judge(request: Request, status: int, content_type: str | None, content: bytes) -> str | None:
    """What is wrong with an answer, or None."""
    if request.kind == "image":
        if status != 200 or content_type != "image/png":
            return f"status {status} ({content_type}): {content[:200]!r}"
        labels = Image.open(io.BytesIO(content))
        if labels.mode != "P" or labels.size != request.size:
            return f"a {labels.mode} PNG of {labels.size}, not a label map of {request.size}"
        return None
    if not 400 <= status < 500 or content_type != "application/json":
        return f"status {status} ({content_type}): {content[:200]!r}"
    if "error" not in json.loads(content):
        return f"JSON without an error: {content[:200]!r}"
    return None


def peak_rss(pid: int) -> int:
    """The process's peak resident set (``VmHWM``) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def serve(weights: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """Start ``fcnseg serve`` on a free port; the process and its URL."""
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fcnseg", "serve", str(weights), "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while not (found := URL_LINE.search(log.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"fcnseg serve did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return process, found.group(1)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--hostile", type=float, default=0.25, help="share of hostile requests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--quick", action="store_true", help="40 requests, 4 clients; print only")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.clients, args.no_write = 40, 4, True
    requests = requests_of(args.requests, args.hostile, args.seed)
    torch.manual_seed(args.seed)
    model = fcnseg.build_model("fcn8s", 6, widths=WIDTHS)
    model.meta = {"preprocess": "imagenet"}
    with tempfile.TemporaryDirectory(prefix="soak-serve-") as folder:
        weights = fcnseg.save_checkpoint(model, Path(folder) / "narrow.pt")
        process, url = serve(weights, Path(folder) / "serve.log")
        try:
            todo: queue.Queue[Request] = queue.Queue()
            for request in requests:
                todo.put(request)
            answers: list[Answer] = []

            def client() -> None:
                while True:
                    try:
                        request = todo.get_nowait()
                    except queue.Empty:
                        return
                    answers.append(post(url, request))

            start = time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - start
            health = http.client.HTTPConnection(*url.split("//")[1].rstrip("/").split(":"), timeout=60)
            health.request("GET", "/health")
            alive = health.getresponse().status == 200
            health.close()
            alive = alive and post(url, requests_of(1, 0.0, args.seed + 1)[0]).problem is None
            peak = peak_rss(process.pid)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            log = (Path(folder) / "serve.log").read_text()
    passed = report(args, answers, wall, peak, alive)
    if any(a.status is None or a.status >= 500 for a in answers):
        trace = log.find("Traceback")
        print(
            f"the server's log: {log[trace : trace + 8000] if trace >= 0 else log[-8000:]}", file=sys.stderr
        )
    if not passed:
        sys.exit(1)


def report(args: argparse.Namespace, answers: list[Answer], wall: float, peak: int, alive: bool) -> bool:
    failures = [a for a in answers if a.problem]
    statuses: dict[str, dict[int | None, int]] = {}
    for answer in answers:
        counts = statuses.setdefault(answer.request.kind, {})
        counts[answer.status] = counts.get(answer.status, 0) + 1
    seconds = [a.seconds for a in answers]
    good = [a.seconds for a in answers if a.request.kind == "image"]
    server_errors = sum(1 for a in answers if a.status is not None and a.status >= 500)
    dropped = sum(1 for a in answers if a.status is None)
    rows = [
        f"| {kind} | {sum(counts.values())} | "
        + ", ".join(f"{status or 'dropped'}: {n}" for status, n in sorted(counts.items(), key=str))
        + " |"
        for kind, counts in statuses.items()
    ]
    text = "\n".join(
        [
            "### fcnseg serve under load",
            "",
            f"{args.clients} clients post {len(answers)} requests to `/segment` of the real `fcnseg serve` "
            f"(defaults; the demo's narrow FCN-8s), {args.hostile:.0%} of them hostile: random bytes, "
            "a PNG cut in half, a 40000x40000 PNG bomb, a 60 MB body. Images of 256-512 px a side.",
            "",
            f"- command: `python benchmarks/soak_serve.py --requests {args.requests} --clients {args.clients}`",
            f"- machine: {machine()}; torch {torch.__version__}",
            f"- date: {datetime.date.today()}; {wall:.0f} s in all, load {os.getloadavg()[0]:.1f} at the end",
            "",
            "| requests | answered right | 5xx | dropped | p50 s | p99 s | images p50 s | images p99 s "
            "| peak RSS GiB | alive after |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {len(answers)} | {len(answers) - len(failures)} | {server_errors} | {dropped} "
            f"| {percentile(seconds, 50):.2f} | {percentile(seconds, 99):.2f} | {percentile(good, 50):.2f} "
            f"| {percentile(good, 99):.2f} | {peak / 2**30:.2f} | {'yes' if alive else 'no'} |",
            "",
            "| kind | requests | statuses |",
            "|---|---|---|",
            *rows,
        ]
    )
    print(text)
    for answer in failures[:20]:
        print(f"FAILED {answer.request.kind} {answer.request.name}: {answer.problem}", file=sys.stderr)
    if not args.no_write:
        write_section("serve-load", text, inside="robustness")
    if peak >= MAX_RSS:
        print(
            f"FAILED: the server's peak memory {peak / 2**30:.2f} GiB reached {MAX_RSS / 2**30:g} GiB",
            file=sys.stderr,
        )
    return not (failures or not alive or peak >= MAX_RSS)


if __name__ == "__main__":
    main()
