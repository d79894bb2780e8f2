"""fridge: HTTP requests put jobs in a Redis queue (the fridge); RQ workers take them out.

`create_app()` is the Flask application factory; `wsgi.py` exposes it to mod_wsgi.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from . import config as config_module
from .store import Store


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(config_module.load(test_config))
    app.json.sort_keys = False
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app.extensions["fridge"] = Store(app.config)

    from . import api, dashboard, errors

    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(dashboard.bp, url_prefix="/dashboard")
    return app


def get_store(app: Flask) -> Store:
    return app.extensions["fridge"]
