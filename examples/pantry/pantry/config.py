"""pantry's settings: kitqueue's, from the TOML file named by PANTRY_CONFIG (the wsgi_app role
writes it) and PANTRY_* variables; its one queue by default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kitqueue import config

NAME = "pantry"
DEFAULTS: dict[str, Any] = {"QUEUES": ["pantry"]}


def load(test_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return config.load(NAME, test_config, DEFAULTS)
