"""``fcnseg serve`` run for real: the command in a subprocess on a free port, its URL read from what it prints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

URL_LINE = re.compile(r"^fcnseg serve: .* at (http://127\.0\.0\.1:\d+/)  \(Ctrl-C to stop\)$", re.M)


@contextmanager
def fcnseg_serve(weights: Path, *flags: str, timeout: float = 60.0) -> Iterator[str]:
    """Start ``fcnseg serve WEIGHTS --port 0 FLAGS`` and yield its URL; stop it with Ctrl-C (SIGINT) after.

    One thread, as in the tests, so that the server's scores are bit for bit the test's own.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "fcnseg", "serve", str(weights), "--port", "0", *flags]
    with tempfile.TemporaryDirectory(prefix="fcnseg-serve-") as folder:
        log = Path(folder) / "serve.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout
            while not (found := URL_LINE.search(log.read_text())):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"fcnseg serve did not start (exit {process.poll()}):\n{log.read_text()}"
                    )
                time.sleep(0.05)
            yield found.group(1)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
