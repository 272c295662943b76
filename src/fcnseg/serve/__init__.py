"""``fcnseg serve``: a local web page to try a model, on a small HTTP API (see ``fcnseg.serve.app``).

Needs the ``serve`` extra (Starlette, python-multipart, uvicorn): ``pip install 'fcnseg[serve]'``.
"""

MAX_QUEUE = 16
"""Uploads taken in at once by default (``--max-queue``): twice the clients of the load test
(``benchmarks/soak_serve.py``), whose uploads must never wait for a place."""

TIMEOUT = 60.0
"""Seconds a request may take by default (``--timeout``) to arrive and then to reach the model."""
