"""Property-based bad input: whatever a client sends, the answer is never 5xx, and a 4xx
enqueues nothing."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
TASK_NAMES = st.sampled_from(["eat", "sleep", "fail", "flaky", "add", "os.system", "", "EAT"])
JOB_BODIES = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries(
        {"task": TASK_NAMES},
        optional={
            "args": JSON_VALUES,
            "queue": st.sampled_from(["critical", "default", "low", "", "urgent"]) | st.text(max_size=10),
            "delay": st.integers(-10, 10**8) | st.floats(allow_nan=False) | st.text(max_size=5),
            "extra": JSON_VALUES,
        },
    ),
)
HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def enqueued(admin) -> int:
    return int(admin.get("fridge:stats:enqueued") or 0)


@pytest.fixture
def quiet_app(settings):
    """The app with retries off, so a slow path cannot hide behind a retry."""
    from fridge.web import create_app

    return create_app({**settings, "JOB_RETRIES": 0})


@HYPOTHESIS
@given(comida=st.text(min_size=0, max_size=100))
def test_any_comida_is_202_or_a_4xx_that_enqueues_nothing(quiet_app, admin, comida):
    client = quiet_app.test_client()
    before = enqueued(admin)
    response = client.get("/comer/" + comida) if comida else client.get("/comer/")
    assert response.status_code < 500, (comida, response.get_json())
    if response.status_code >= 300:  # 4xx, or a redirect for paths such as "//x"
        assert enqueued(admin) == before
    if response.status_code >= 400:
        assert "error" in (response.get_json() or {})
    if response.status_code < 300:
        assert response.status_code == 202


@HYPOTHESIS
@given(body=JOB_BODIES)
def test_any_job_body_is_202_or_a_4xx_that_enqueues_nothing(quiet_app, admin, body):
    client = quiet_app.test_client()
    before = enqueued(admin)
    response = client.post("/jobs", data=json.dumps(body), content_type="application/json")
    assert response.status_code < 500, (body, response.get_json())
    if response.status_code >= 400:
        assert enqueued(admin) == before
        assert response.get_json()["error"]
    else:
        assert response.status_code == 202


@HYPOTHESIS
@given(raw=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_arbitrary_bytes_never_break_the_api(quiet_app, admin, raw, content_type):
    client = quiet_app.test_client()
    before = enqueued(admin)
    response = client.post("/jobs", data=raw, content_type=content_type)
    assert response.status_code < 500
    if response.status_code >= 400:
        assert enqueued(admin) == before


@HYPOTHESIS
@given(key=st.text(max_size=250), job_id=st.text(max_size=80))
def test_odd_headers_and_job_ids(quiet_app, key, job_id):
    client = quiet_app.test_client()
    try:
        response = client.get("/comer/pan", headers={"Idempotency-Key": key})
    except ValueError:
        return  # the test client itself refuses header values with newlines
    assert response.status_code < 500
    assert client.get("/jobs/" + job_id).status_code < 500 if job_id and "/" not in job_id else True
