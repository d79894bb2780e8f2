"""The entry script role wsgi_site writes (templates/wsgi.py.j2), rendered by Ansible and run
as mod_wsgi runs it: an app's exception before it answers is the app's own JSON 500, so that
mod_wsgi's own 500 (answered 503, wsgi_site_error_statuses) means only a lost daemon process or
an app that cannot load."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
def app(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("the probe failed")
    if environ["PATH_INFO"] == "/late":
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("the probe failed after it started its answer")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"fine"]
"""


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    where = tmp_path_factory.mktemp("entry")
    (where / "kit_probe_app.py").write_text(PROBE)
    variables = where / "vars.json"
    variables.write_text(
        json.dumps(
            {
                "wsgi_site_name": "probe",
                "wsgi_site_module": "kit_probe_app:app",
                "wsgi_site_environment": {"PROBE": "1"},
                "__wsgi_site_reload_on": {"results": []},
            }
        )
    )
    script = where / "wsgi.py"
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    rendered = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            "localhost",
            "-c",
            "local",
            "-m",
            "ansible.builtin.template",
            "-a",
            f"src={ROOT}/roles/wsgi_site/templates/wsgi.py.j2 dest={script}",
            "-e",
            f"@{variables}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stdout[-3000:] + rendered.stderr[-2000:]
    sys.path.insert(0, str(where))
    spec = importlib.util.spec_from_file_location("kit_probe_entry", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(where))
    sys.modules.pop("kit_probe_app", None)
    os.environ.pop("PROBE", None)


def call(entry, path: str) -> tuple[list, bytes, str]:
    started: list = []
    errors = io.StringIO()

    def start_response(status, headers, exc_info=None):
        started.append((status, dict(headers), exc_info))

    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.errors": errors}
    body = b"".join(entry.application(environ, start_response))
    return started, body, errors.getvalue()


def test_an_exception_before_the_app_answers_is_its_own_json_500_with_the_traceback_logged(entry):
    started, body, logged = call(entry, "/boom")
    ((status, headers, exc_info),) = started
    assert status == "500 Internal Server Error"
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body)["status"] == 500
    assert exc_info is not None  # PEP 3333: re-raised by the server if headers went out already
    assert "RuntimeError: the probe failed" in logged


def test_an_answer_passes_as_the_app_gave_it_with_the_site_environment_set(entry):
    started, body, logged = call(entry, "/")
    assert [s[0] for s in started] == ["200 OK"]
    assert body == b"fine"
    assert logged == ""
    assert os.environ["PROBE"] == "1"


def test_an_answer_started_then_failed_is_replaced_by_the_500_before_anything_is_sent(entry):
    """PEP 3333: start_response again with exc_info replaces headers not sent yet (the server
    raises it again once they are: then mod_wsgi ends the answer, as without the wrapper)."""
    started, body, logged = call(entry, "/late")
    assert [s[0] for s in started] == ["200 OK", "500 Internal Server Error"]
    assert started[0][2] is None
    assert started[1][2] is not None
    assert json.loads(body)["status"] == 500
    assert "after it started its answer" in logged
