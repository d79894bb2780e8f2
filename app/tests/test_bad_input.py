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
# Bodies close to valid ones: a real task, its arguments by name or in order (sometimes one too
# many or too few), values around each limit; a tenth or so are valid.
PARAMS = {
    "eat": ["comida"],
    "sleep": ["seconds"],
    "fail": ["message"],
    "flaky": ["failures"],
    "add": ["a", "b"],
}
VALUES = {
    "comida": st.sampled_from(["pan", "platano", "x" * 64, "x" * 65, " ", "", "a\x01"])
    | st.text(st.characters(codec="utf-8"), max_size=70),
    "seconds": st.integers(-1, 3601) | st.sampled_from([0, 3600, 3600.5, 2.5]),
    "message": st.sampled_from(["boom", "", "x" * 200, "x" * 201]) | st.text(max_size=10),
    "failures": st.integers(-1, 11) | st.sampled_from([2.0, 2.5, True]),
    "a": st.floats(-2e12, 2e12) | st.sampled_from([0, -1e12, 1e12 + 1, "1", None]),
    "b": st.integers(-(10**13), 10**13) | st.sampled_from([1e12, 1e12 + 1]),
}


def _near_valid(task: str):
    names = PARAMS[task]
    ordered = st.tuples(*(VALUES[n] for n in names)).map(list)
    args = st.one_of(
        ordered,
        ordered,
        st.fixed_dictionaries({n: VALUES[n] for n in names}),
        ordered.map(lambda values: [*values, 1]),
        ordered.map(lambda values: values[1:]),
    )
    return st.fixed_dictionaries(
        {"task": st.just(task), "args": args},
        optional={
            "queue": st.sampled_from(["default", "low", "default", "low", "critical", "urgent"]),
            "delay": st.sampled_from([0, 0.5, 2592000, 2592000.5, -1, True]) | st.integers(0, 3 * 10**6),
        },
    )


NEAR_VALID_BODIES = st.sampled_from(list(PARAMS)).flatmap(_near_valid)
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


@pytest.fixture
def new_job_schema(quiet_app):
    """What /openapi.json promises about POST /jobs's body, read by the reference implementation
    of JSON Schema 2020-12 (not by the app's own validator)."""
    from jsonschema import Draft202012Validator, FormatChecker
    from kitqueue.schema import FORMATS

    formats = FormatChecker()
    formats.checks("printable")(FORMATS["printable"])
    doc = quiet_app.test_client().get("/openapi.json").get_json()
    return Draft202012Validator(doc["components"]["schemas"]["NewJob"], format_checker=formats)


@settings(HYPOTHESIS, max_examples=300)
@given(body=st.one_of(NEAR_VALID_BODIES, NEAR_VALID_BODIES, JOB_BODIES))
def test_the_api_accepts_a_body_exactly_when_its_openapi_document_says_so(quiet_app, new_job_schema, body):
    """OpenAPI, validation and limits come from one definition: whatever the body, the API's
    answer (202 or 400) and the published schema agree."""
    response = quiet_app.test_client().post("/jobs", data=json.dumps(body), content_type="application/json")
    valid = new_job_schema.is_valid(body)
    assert response.status_code == (202 if valid else 400), (body, response.get_json())
