"""Fixtures for the web scenario: HTTP to the app host's VirtualHost, as a client would."""

from __future__ import annotations

import pytest
from kit_checks import Http, hostvars


@pytest.fixture(scope="module")
def app_host_vars() -> dict:
    return hostvars("web-app1")


@pytest.fixture(scope="module")
def http(app_host_vars) -> Http:
    # The scenario turns the API's tokens on (host_vars): requests carry the first.
    return Http(app_host_vars["kit_address"], token=app_host_vars["kit_app_api_tokens"][0])
