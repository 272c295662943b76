"""``fcnseg serve``: a local web page to try a model, on a small HTTP API (see ``fcnseg.serve.app``).

Needs the ``serve`` extra (Starlette, python-multipart, uvicorn): ``pip install 'fcnseg[serve]'``.
"""
