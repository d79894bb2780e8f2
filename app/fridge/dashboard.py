"""The dashboard (resque-web's role): queues, workers and failed jobs, with requeue and
delete. It reads Redis through the same Sentinel-aware connection as the API, so it follows a
failover and logs in as the app's ACL user (rq-dashboard can do neither: its Sentinel URL
has no user name). Apache puts it behind HTTP Basic auth; the POST actions also refuse
requests that another site makes a browser send (cross-site request forgery)."""

from __future__ import annotations

from urllib.parse import urlparse

from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request, url_for
from rq.registry import FailedJobRegistry

from . import monitoring
from .queueing import fetch_job, make_queue
from .store import app_store

bp = Blueprint("dashboard", __name__, template_folder="templates")
FAILED_SHOWN = 50


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
        if urlparse(source).netloc != request.host:
            abort(403, "dashboard actions must come from the dashboard page (Origin does not match)")
        return
    if "X-Requested-With" not in headers:
        abort(403, "dashboard actions must come from the dashboard page (or send X-Requested-With)")


def _failed_jobs(store) -> list[dict]:
    found = []
    for name in store.config["QUEUES"]:
        registry = FailedJobRegistry(queue=make_queue(store, name))
        for job_id in registry.get_job_ids(0, FAILED_SHOWN - 1):
            job = fetch_job(store, job_id)
            if job is not None:
                found.append(monitoring.describe_job(job))
    return found


@bp.get("/")
def index():
    store = app_store(current_app)
    data = store.retrying(lambda: monitoring.overview(store))
    failed = store.retrying(lambda: _failed_jobs(store))
    return render_template("dashboard.html", data=data, failed=failed)


@bp.get("/api/overview")
def overview_json():
    store = app_store(current_app)
    data = store.retrying(lambda: monitoring.overview(store))
    data["failed_jobs"] = store.retrying(lambda: _failed_jobs(store))
    return jsonify(data)


@bp.post("/failed/<job_id>/<action>")
def failed_action(job_id: str, action: str):
    _same_origin()
    if action not in ("requeue", "delete"):
        abort(404)
    store = app_store(current_app)
    job = fetch_job(store, job_id)
    if job is None:
        abort(404)
    registry = FailedJobRegistry(queue=make_queue(store, job.origin))

    def act() -> None:
        if action == "requeue":
            registry.requeue(job_id)
        else:
            registry.remove(job_id, delete_job=True)

    store.retrying(act)
    if request.accept_mimetypes.best == "application/json":
        return jsonify({"job_id": job_id, "action": action})
    return redirect(url_for("dashboard.index"), code=303)
