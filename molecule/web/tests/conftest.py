"""Fixtures for the web scenario: HTTP to the app host's VirtualHost, as a client would."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from kit_checks import hostvars


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class Http:
    """A tiny HTTP client for the app's VirtualHost (no redirects, no retries)."""

    def __init__(self, address: str) -> None:
        self.base = f"http://{address}"

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        url = self.base + path  # always http:// to the test host
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - see above
                return Reply(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            return Reply(error.code, dict(error.headers), error.read())

    def get(self, path: str, **kwargs) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: dict | None = None, **kwargs) -> Reply:
        return self.request("POST", path, body=body, **kwargs)

    def wait_for_job(self, job_id: str, wanted: set[str], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        job: dict = {}
        while time.monotonic() < deadline:
            job = self.get(f"/jobs/{job_id}").json()
            if job.get("status") in wanted:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not {wanted} within {timeout}s: {job}")


@pytest.fixture(scope="module")
def app_host_vars() -> dict:
    return hostvars("web-app1")


@pytest.fixture(scope="module")
def http(app_host_vars) -> Http:
    return Http(app_host_vars["kit_address"])
