"""Property-based bad input: whatever a client sends, the answer is never 5xx, and a 4xx
enqueues nothing."""

from __future__ import annotations

import errno
import json
import socket
import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kitqueue.store import is_transient

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


QUERY_PATHS = st.sampled_from(["/comer/pan", "/dashboard/", "/dashboard/jobs/failed/low"])


@HYPOTHESIS
@given(raw=st.binary(max_size=60), path=QUERY_PATHS)
def test_any_query_string_bytes_never_break_the_api_or_the_dashboard(quiet_app, admin, raw, path):
    """Apache passes a query's raw bytes on (WSGI hands them over decoded as Latin-1); bytes
    that were not UTF-8 made werkzeug raise inside request.args: a 500."""
    client = quiet_app.test_client()
    before = enqueued(admin)
    response = client.get(path, environ_overrides={"QUERY_STRING": raw.decode("latin-1")})
    assert response.status_code < 500, (raw, response.get_data(as_text=True)[:300])
    if response.status_code >= 400:
        assert enqueued(admin) == before


def test_a_query_that_is_not_utf8_is_named(quiet_app, admin):
    client = quiet_app.test_client()
    for query in ("queue=\xff", "queue=%ff%fe"):
        response = client.get("/comer/pan", environ_overrides={"QUERY_STRING": query})
        assert response.status_code == 400, response.get_data(as_text=True)
        assert response.get_json()["error"] == "the query string is not valid UTF-8"
    assert enqueued(admin) == 0
    assert client.get("/comer/pan?queue=low").status_code == 202


def test_head_on_an_enqueue_route_is_405_and_enqueues_nothing(quiet_app, admin):
    """Flask answers HEAD on every GET route by running it: a link checker's or a monitor's
    HEAD /comer/<x> enqueued a job."""
    client = quiet_app.test_client()
    response = client.head("/comer/pan")
    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert enqueued(admin) == 0
    assert client.head("/openapi.json").status_code == 200  # reads keep HEAD


def test_dashboard_odd_input_is_a_4xx_or_ignored(quiet_app):
    client = quiet_app.test_client()
    huge = client.get("/dashboard/jobs/failed/low?page=400000000000000000")
    assert huge.status_code == 200, huge.get_data(as_text=True)[:300]  # far past the end: empty
    forged = client.post("/dashboard/failed/requeue-all", headers={"Origin": "http://["})
    assert forged.status_code == 403
    back = client.post(
        "/dashboard/failed/requeue-all",
        data={"next": "/dashboard/\r\nSet-Cookie: x=1"},
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    assert (back.status_code, back.headers["Location"]) == (303, "/dashboard/")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (FileNotFoundError(2, "No such file or directory"), False),
        (PermissionError(13, "Permission denied"), False),
        (IsADirectoryError(21, "Is a directory"), False),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (OSError(errno.EHOSTUNREACH, "No route to host"), True),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), True),
        (TimeoutError(), True),
        (socket.gaierror(-2, "Name or service not known"), True),
        (ssl.SSLError(1, "tlsv1 alert"), True),
    ],
)
def test_only_a_socket_s_oserror_counts_as_a_failover(error, transient):
    assert is_transient(error) is transient


def test_a_file_error_is_a_500_with_its_traceback_not_a_503(settings, caplog):
    """A missing or unreadable file (an asset, a template) is a bug to see, not a failover to
    wait out: it was answered 503 'Redis unavailable' with Retry-After, and one warning line."""
    from fridge.web import create_app

    app = create_app(settings)

    @app.get("/_test/file-error")
    def file_error():
        raise PermissionError(13, "Permission denied", "/srv/fridge/static/app.js")

    response = app.test_client().get("/_test/file-error")
    assert response.status_code == 500
    assert "Retry-After" not in response.headers
    assert "PermissionError" in caplog.text
