"""A bare WSGI hello-world: what Apache and mod_wsgi cost without the app's work."""

from __future__ import annotations

from collections.abc import Callable, Iterable

BODY = b'{"hello": "world"}\n'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [BODY]
