"""The web tier: the Flask application factory (`create_app`) that mod_wsgi serves through
`wsgi.py`, with the API and the dashboard. The workers never import this module (nor Flask)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask
from kitqueue.store import APP_EXTENSION, Store

from . import api, dashboard, errors
from . import config as config_module


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask("fridge")
    app.config.update(config_module.load(test_config))
    app.json.sort_keys = False
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app.extensions[APP_EXTENSION] = Store(app.config)
    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(dashboard.bp, url_prefix="/dashboard")
    return app
