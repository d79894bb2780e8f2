"""The dashboard (resque-web's and Sidekiq's role): jobs finished and failed per minute and per
hour, queues and their registries a page at a time, a page per job, workers, the Redis group as
the Sentinels and the master report it; requeue, delete and requeue all failed. It reads Redis
through the same Sentinel-aware connection as the API, so it follows a failover and logs in as
the app's ACL user (rq-dashboard can do neither: its Sentinel URL has no user name). Apache puts
it behind HTTP Basic auth; the POST actions also refuse requests that another site makes a
browser send (cross-site request forgery). Nothing is read whole: a queue of 100,000 jobs costs
a page (browse.py)."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis
from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request, url_for
from kitqueue import stats
from kitqueue.queueing import read_job
from kitqueue.store import Store, Unavailable, app_store
from rq.exceptions import NoSuchJobError

from . import browse, monitoring
from .monitoring import describe_job

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static")
FAILED_SHOWN = 10
MAX_PAGE = 10**9  # far past any registry: (MAX_PAGE - 1) * browse.PAGE fits a Redis index
# Apache checks the Basic auth password (bcrypt) on every request: the pages name their assets
# by a hash of their content, and the browser keeps them for a year without asking again, so a
# page (and its refresh every 10 s) costs one check, not one per asset. A new release's assets
# have new names. "private": no shared cache keeps what was sent to a logged-in user.
ASSET_MAX_AGE = 365 * 24 * 3600


@cache
def _asset_version(filename: str) -> str:
    return hashlib.sha256((Path(bp.static_folder or "") / filename).read_bytes()).hexdigest()[:12]


@bp.app_template_global()
def asset_url(filename: str) -> str:
    """The URL of a dashboard asset, named by its content (see ASSET_MAX_AGE)."""
    return url_for("dashboard.static", filename=filename, v=_asset_version(filename))


@bp.after_request
def _cache_named_assets(response):
    # Only under the name of the content sent: during a rolling deploy an old web host may be
    # asked for a new name, and what it sends must not be kept under that name.
    if request.endpoint == "dashboard.static":
        named = response.status_code == 200
        if named and request.args.get("v") == _asset_version((request.view_args or {}).get("filename", "")):
            response.cache_control.public = False
            response.cache_control.no_cache = None
            response.cache_control.private = True
            response.cache_control.max_age = ASSET_MAX_AGE
            response.cache_control.immutable = True
        return response
    # Pages and their JSON show jobs' arguments, results and tracebacks: kept on no disk (the
    # browser's cache of a shared or lost laptop), fetched afresh each time.
    response.cache_control.no_store = True
    return response


def _same_origin() -> None:
    """Refuse a POST that a browser sends for another site, as browsers let a server tell:
    Sec-Fetch-Site (current browsers, over HTTPS and to localhost), else Origin (sent with
    every cross-origin POST by browsers of the last years; "null" when a referrer policy hides
    it), else Referer. A request with none of them must carry X-Requested-With, a header no
    HTML form can send and no other site's script may add without a CORS grant (there is none):
    scripts and curl add it, an old browser tricked into posting a form cannot."""
    headers = request.headers
    site = headers.get("Sec-Fetch-Site")
    if site is not None:
        if site not in ("same-origin", "none"):
            abort(403, f"dashboard actions must come from the dashboard page (Sec-Fetch-Site: {site})")
        return
    source = headers.get("Origin") or headers.get("Referer")
    if source is not None:
        try:
            netloc = urlparse(source).netloc
        except ValueError:  # "http://[": once a 500
            netloc = None
        if netloc != request.host:
            abort(403, "dashboard actions must come from the dashboard page (Origin does not match)")
        return
    if "X-Requested-With" not in headers:
        abort(403, "dashboard actions must come from the dashboard page (or send X-Requested-With)")


def _queue(store: Store, name: str) -> str:
    if name not in store.config["QUEUES"]:
        abort(404, f"no queue {name!r}")
    return name


def _newest_failed(store: Store) -> list[dict[str, Any]]:
    pages = [browse.page(store, "failed", q, 0, FAILED_SHOWN) for q in store.config["QUEUES"]]
    found = [job for page in pages for job in page.jobs]
    return sorted(found, key=lambda j: j["ended_at"] or "", reverse=True)[:FAILED_SHOWN]


def _group(store: Store) -> dict[str, Any]:
    """The Sentinels' view and the master's replicas; the replicas are unknown (None) when the
    master does not answer."""
    try:
        copies = monitoring.replication(store)
    except (redis.RedisError, Unavailable):
        copies = None
    return {"sentinels": monitoring.sentinel_view(store), "replication": copies}


@bp.get("/")
def index():
    store = app_store(current_app)
    data = store.retrying(lambda: monitoring.overview(store))
    failed = store.retrying(lambda: _newest_failed(store))
    activity = store.retrying(lambda: stats.activity(store.redis, store.key_prefix))
    return render_template(
        "dashboard.html", data=data, failed=failed, activity=activity, group=_group(store), here=_here()
    )


@bp.get("/jobs/<state>/<queue>")
def jobs(state: str, queue: str):
    store = app_store(current_app)
    if state not in browse.STATES:
        abort(404, f"no job state {state!r}")
    # Beyond a 64-bit offset Redis refuses the range (once a 500); far past the end is empty.
    number = min(request.args.get("page", default=1, type=int) or 1, MAX_PAGE)
    found = store.retrying(
        lambda: browse.page(store, state, _queue(store, queue), (max(number, 1) - 1) * browse.PAGE)
    )
    return render_template("jobs.html", page=found, states=browse.STATES, here=_here())


@bp.get("/job/<job_id>")
def job(job_id: str):
    store = app_store(current_app)
    found = read_job(store, job_id, browse.details)
    if found is None:
        abort(404, f"no job {job_id}")
    return render_template("job.html", job=found, here=_here())


@bp.get("/find")
def find():
    job_id = request.args.get("job_id", "").strip()
    return redirect(url_for("dashboard.job", job_id=job_id) if job_id else url_for("dashboard.index"))


@bp.get("/api/overview")
def overview_json():
    store = app_store(current_app)
    data = store.retrying(lambda: monitoring.overview(store))
    data["failed_jobs"] = store.retrying(lambda: _newest_failed(store))
    data["activity"] = store.retrying(lambda: stats.activity(store.redis, store.key_prefix))
    data["group"] = _group(store)
    return jsonify(data)


@bp.post("/failed/<job_id>/<action>")
def failed_action(job_id: str, action: str):
    """Requeue or delete a failed job. The page may be stale (another operator, a double
    click): a job that is not in its queue's failed registry is left alone (409). The action is
    not retried through a failover: a lost reply would act twice (answered 503, as the CLI)."""
    _same_origin()
    if action not in ("requeue", "delete"):
        abort(404)
    store = app_store(current_app)
    found = read_job(store, job_id, lambda job: (job, describe_job(job)["status"]))
    if found is None:
        abort(404, f"no job {job_id}")
    job, status = found
    if status != "failed":
        abort(409, f"job {job_id} is not failed (status: {status}): nothing done")
    try:
        if action == "requeue":
            browse.requeue_failed(store, job.origin, job_id)
        else:
            browse.delete_failed(store, job)
    except NoSuchJobError:
        abort(404, f"no job {job_id} (deleted meanwhile)")
    except browse.NotFailed as error:
        abort(409, str(error))
    return _done({"job_id": job_id, "action": action})


@bp.post("/failed/requeue-all")
def requeue_all():
    _same_origin()
    store = app_store(current_app)
    queue = request.form.get("queue")
    names = [_queue(store, queue)] if queue else store.config["QUEUES"]
    at_most = current_app.config["REQUEUE_ALL_AT_ONCE"]
    done = store.retrying(lambda: browse.requeue_all_failed(store, names, at_most))
    left = store.retrying(lambda: browse.failed_count(store, names))
    return _done({"action": "requeue", "requeued": len(done), "left": left})


def _here() -> str:
    """This page's path and query: where an action's form returns to."""
    query = request.query_string.decode()
    return request.script_root + request.path + (f"?{query}" if query else "")


def _done(answer: dict[str, Any]):
    """JSON for scripts; for a browser, back to the dashboard page the form was on."""
    if request.accept_mimetypes.best == "application/json":
        return jsonify(answer)
    back = request.form.get("next", "")
    home = url_for("dashboard.index")
    # A line break in it once made the Location header raise: a 500.
    if not back.startswith(home) or "//" in back or "\\" in back or not back.isprintable():
        back = home
    return redirect(back, code=303)
