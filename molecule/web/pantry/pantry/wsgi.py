"""A bare WSGI app: reports its own name and the version of itsdangerous it imports."""

import json
import sys

import itsdangerous


def application(environ, start_response):
    body = json.dumps(
        {"app": "pantry", "itsdangerous": itsdangerous.__version__, "python": sys.prefix}
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
