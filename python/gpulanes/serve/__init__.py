"""Serving a :class:`gpulanes.Runtime` to clients written by others.

:func:`kserve_app` is an ASGI application speaking the KServe v2 / Open Inference Protocol over
HTTP with JSON tensors (run it with any ASGI server, e.g. ``uvicorn``). Needs the ``server``
extra (Starlette).
"""

from .kserve import kserve_app

__all__ = ["kserve_app"]
