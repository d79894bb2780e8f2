"""The dashboard in a real browser (headless Chromium through Apache): the charts are drawn,
the job pages and lists work, Requeue, Delete and Requeue all work from the page, and a form on
another site that makes the browser POST to the dashboard (with the Basic credentials the
browser holds) is refused."""

from __future__ import annotations

import contextlib
import http.server
import math
import os
import threading
import time
from collections.abc import Iterator

import pytest
import testinfra.utils.ansible_runner
import trio
from kit_checks import Http, wait_for
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts("web")

DASHBOARD_USER = ("admin", "dev-dashboard-3d7f1a9c")  # development inventory's value
# flaky fails this many attempts: more than JOB_RETRIES (3) + 1, so it ends failed; the next
# attempt (a requeue) succeeds.
FAILURES = 4


# Chromium sends Sec-Fetch-Site only to a secure context (HTTPS, localhost): over this
# scenario's plain HTTP the dashboard's Origin check is what refuses a forged POST. The same
# tests run a second time with the dashboard's address treated as secure (Chromium's own flag),
# so that the browser sends Sec-Fetch-Site, as it does over production's HTTPS.
CONTEXTS = {
    "plain-http": "(Origin does not match)",
    "secure-context": "(Sec-Fetch-Site: cross-site)",
}


@pytest.fixture(scope="module", params=list(CONTEXTS))
def context(request) -> str:
    return request.param


class BasicAuthPrompt:
    """What a user does at Chromium's Basic auth prompt, through CDP's Fetch domain: the browser
    meets the 401 and its challenge itself, and is given the login (Fetch.authRequired,
    answered with Fetch.continueWithAuth) only when the challenge comes from `origin`. Chromium
    then keeps the login and sends it on its own with later requests to the site, as it does a
    typed one, including those another site's page makes it send. A challenge that comes again
    for the same request (the login was refused) is cancelled, as a user closes the prompt: the
    401 page shows. With handleAuthRequests, Chromium pauses every request: each goes on as
    it is (Fetch.continueRequest).

    It listens on Selenium's CDP connection to the window (driver.bidi_connection(), trio) in
    a thread of its own: Selenium's commands (get, click) wait while a page loads, and the
    challenges come meanwhile."""

    def __init__(self, driver: webdriver.Chrome, origin: str, login: tuple[str, str]) -> None:
        self.driver, self.origin, self.login = driver, origin.rstrip("/"), login
        self.answered: list[str] = []  # the URL of each request given the login
        self.cancelled: list[str] = []  # ... and of each refused one, or from another origin
        self.failures: list[BaseException] = []
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._run, name="basic-auth-prompt", daemon=True)

    def start(self, timeout: float = 30) -> BasicAuthPrompt:
        self._thread.start()
        assert self._ready.wait(timeout), f"CDP's Fetch domain not enabled within {timeout} s"
        if self.failures:
            raise self.failures[0]
        return self

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):  # it had ended already
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(timeout=15)
        if self.failures:
            raise self.failures[0]

    def _run(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as failure:  # handed to the test's thread (start, stop)
            self.failures.append(failure)
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            async with self.driver.bidi_connection() as connection:
                session, fetch = connection.session, connection.devtools.fetch
                # Unbounded: an event dropped (Selenium's default keeps 10) would leave its
                # request paused for good.
                events = session.listen(fetch.RequestPaused, fetch.AuthRequired, buffer_size=math.inf)
                await session.execute(fetch.enable(handle_auth_requests=True))
                self._ready.set()
                challenged: set[str] = set()
                async for event in events:
                    if isinstance(event, fetch.AuthRequired):
                        answer = self._answer(fetch, event, challenged)
                        command = fetch.continue_with_auth(event.request_id, answer)
                    else:
                        command = fetch.continue_request(event.request_id)
                    with contextlib.suppress(connection.cdp.BrowserError):  # its page was left meanwhile
                        await session.execute(command)

    def _answer(self, fetch, event, challenged: set[str]):
        """The login for the dashboard's first challenge of a request, else a cancel."""
        challenge, first = event.auth_challenge, event.request_id not in challenged
        challenged.add(event.request_id)
        if first and challenge.source != "Proxy" and challenge.origin.rstrip("/") == self.origin:
            self.answered.append(event.request.url)
            return fetch.AuthChallengeResponse("ProvideCredentials", *self.login)
        self.cancelled.append(event.request.url)
        return fetch.AuthChallengeResponse("CancelAuth")


def chromium(secure_origin: str | None = None) -> webdriver.Chrome:
    """Headless Chromium (Debian's), driven by chromedriver; with `secure_origin`, that plain
    HTTP origin treated as a secure context."""
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1024"):
        options.add_argument(argument)
    if secure_origin:
        options.add_argument(f"--unsafely-treat-insecure-origin-as-secure={secure_origin}")
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture(scope="module")
def prompt(context, http) -> Iterator[BasicAuthPrompt]:
    """The browser, and the user at its Basic auth prompt who types the dashboard's login."""
    driver = chromium(http.base if context == "secure-context" else None)
    try:
        answering = BasicAuthPrompt(driver, http.base, DASHBOARD_USER).start()
        try:
            yield answering
        finally:
            answering.stop()
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser(prompt) -> webdriver.Chrome:
    return prompt.driver


@pytest.fixture
def failed_jobs(http: Http) -> list[str]:
    """Two jobs that ran out of retries and sit in the failed-job registry."""
    ids = [http.post("/jobs", body={"task": "flaky", "args": [FAILURES]}).json()["job_id"] for _ in range(2)]
    for job_id in ids:
        http.wait_for_job(job_id, {"failed"}, timeout=60)
    return ids


@pytest.fixture
def other_site() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A page on another origin (this machine, not the app host) that posts to the dashboard."""
    pages: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path, b"")
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pages
    finally:
        server.shutdown()


def _find(browser: webdriver.Chrome, by: str, value: str) -> WebElement:
    """find_element, retried for 15 s: also while a page is being replaced, when Chromium
    answers 'Node with given id does not belong to the document' instead of not found."""
    return WebDriverWait(browser, 15, ignored_exceptions=(WebDriverException,)).until(
        lambda driver: driver.find_element(by, value)
    )


def _replaced(element: WebElement):
    """A condition for WebDriverWait: the element's page was replaced by another. Asked about an
    element of a page it has just left, Chromium (156) may answer an unknown error, 'Node with
    given id does not belong to the document', rather than 'stale element'."""

    def check(_driver) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if "does not belong to the document" in str(error):
                return True
            raise
        return False

    return check


def _click(browser: webdriver.Chrome, base: str, job_id: str, label: str) -> None:
    """Click the job's button on the dashboard and wait for the page the POST leads back to."""
    browser.get(f"{base}/dashboard/")
    row = _find(browser, By.XPATH, f"//tr[td/a[text()='{job_id}']]")
    button = row.find_element(By.XPATH, f".//button[text()='{label}']")
    button.click()
    WebDriverWait(browser, 15).until(_replaced(button))  # the form was posted, a new page loaded
    back = f"{base}/dashboard/"
    wait_for(lambda: browser.current_url == back and "fridge" in browser.title, 15, "the dashboard again")


def test_requeue_and_delete_work_from_the_page(browser, http, failed_jobs):
    requeued, deleted = failed_jobs
    started = time.monotonic()
    _click(browser, http.base, requeued, "Requeue")
    # Not refused (the check's message; a bare "403" also matches job ids and timestamps).
    assert "must come from the dashboard page" not in browser.page_source
    done = http.wait_for_job(requeued, {"finished"}, timeout=30)
    assert done["result"] == FAILURES + 1  # the attempt after the requeue succeeded
    print(f"\nrequeued from the browser: finished {time.monotonic() - started:.1f}s after the click")

    _click(browser, http.base, deleted, "Delete")
    assert http.get(f"/jobs/{deleted}").status == 404
    assert deleted not in browser.page_source


def test_a_forged_cross_site_post_is_refused(browser, prompt, context, http, failed_jobs, other_site):
    origin, pages = other_site
    victim = failed_jobs[0]
    browser.get(f"{http.base}/dashboard/")  # the user has logged in: the browser holds the login
    assert "fridge" in browser.title, browser.page_source
    assert prompt.answered, "the dashboard asked for no login"
    answered = len(prompt.answered)
    pages["/attack.html"] = f"""<!doctype html><title>cats</title>
<form id=f method=post action="{http.base}/dashboard/failed/{victim}/delete"></form>
<script>document.getElementById('f').submit()</script>""".encode()
    browser.get(f"{origin}/attack.html")
    wait_for(lambda: browser.current_url.startswith(http.base), 15, "the forged form to be posted")
    assert f"dashboard actions must come from the dashboard page {CONTEXTS[context]}" in browser.page_source
    assert http.get(f"/jobs/{victim}").json()["status"] == "failed"  # still there
    # Refused with the login the browser sent on its own: no challenge was answered for it.
    assert prompt.answered[answered:] == [], prompt.answered


def test_the_front_page_charts_jobs_and_every_list_pages_through_them(browser, http, failed_jobs):
    """The overview draws its two charts (uPlot, served by the app: no CDN, no inline script),
    links each failed job to its page (the traceback), and the finished list pages through
    more than one page; the screenshot is the README's."""
    fresas = [http.get("/comer/fresa") for _ in range(30)]
    assert {answer.status for answer in fresas} == {202}
    browser.get(f"{http.base}/dashboard/")
    wait_for(
        lambda: all(
            _find(browser, By.ID, c).get_attribute("data-drawn") for c in ("chart-minutes", "chart-hours")
        ),
        15,
        "both charts to be drawn",
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, ".uplot canvas")) == 2
    shot = os.environ.get("KIT_DASHBOARD_SCREENSHOT") or os.path.join(
        os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "dashboard.png"
    )
    browser.set_window_size(1280, 1500)
    assert browser.save_screenshot(shot)
    with open(shot, "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    print(f"\nscreenshot: {shot} ({os.path.getsize(shot)} bytes)")

    _find(browser, By.LINK_TEXT, failed_jobs[0]).click()
    wait_for(lambda: f"/dashboard/job/{failed_jobs[0]}" in browser.current_url, 15, "the job's page")
    assert "Traceback (most recent call last)" in browser.page_source
    assert _find(browser, By.CSS_SELECTOR, "td.status").text == "failed"

    for answer in fresas:  # more than a page of finished jobs
        http.wait_for_job(answer.json()["job_id"], {"finished"}, timeout=60)
    browser.get(f"{http.base}/dashboard/jobs/finished/default")
    assert "Page 1 of " in browser.page_source
    _find(browser, By.CSS_SELECTOR, "a[rel=next]").click()
    wait_for(lambda: "page=2" in browser.current_url, 15, "the second page")
    assert "Page 2 of " in browser.page_source
    assert browser.find_elements(By.CSS_SELECTOR, "#jobs a[href*='/dashboard/job/']")


def test_requeue_all_failed_from_the_page(browser, http, failed_jobs):
    browser.get(f"{http.base}/dashboard/")
    button = _find(browser, By.XPATH, "//button[text()='Requeue all failed']")
    button.click()
    WebDriverWait(browser, 15).until(_replaced(button))
    assert "must come from the dashboard page" not in browser.page_source
    for job_id in failed_jobs:
        assert http.wait_for_job(job_id, {"finished"}, timeout=30)["result"] == FAILURES + 1


def test_a_refresh_fetches_only_the_page(browser, http, host):
    """The overview refreshes itself every 10 s, and Apache checks the Basic auth password
    (bcrypt, cost 12: about 0.2 s of CPU) on every request. Its four assets, named by their
    content, stay in the browser's cache: a refresh is one request in Apache's log, not five."""
    log = "/var/log/apache2/fridge-access.log"

    def lines() -> int:
        return int(host.check_output(f"wc -l < {log}"))

    def settled() -> bool:  # the first load's requests are all logged
        before = lines()
        time.sleep(0.3)
        return lines() == before

    def drawn() -> bool:  # dashboard.js ran (from the cache, after the refresh)
        return bool(_find(browser, By.ID, "chart-minutes").get_attribute("data-drawn"))

    browser.get(f"{http.base}/dashboard/")
    wait_for(drawn, 15, "the chart")
    wait_for(settled, 10, "Apache to log the first load")
    seen = lines()
    page = _find(browser, By.TAG_NAME, "html")
    WebDriverWait(browser, 25).until(_replaced(page))  # it refreshed itself
    wait_for(drawn, 15, "the chart again")
    wait_for(settled, 10, "Apache to log the refresh")
    requests = [line.split('"')[1] for line in host.check_output(f"tail -n +{seen + 1} {log}").splitlines()]
    dashboard = [r for r in requests if " /dashboard" in r]
    assert [r for r in dashboard if r.startswith("GET /dashboard/ ")], requests
    assert not [r for r in dashboard if "/dashboard/static/" in r], dashboard
    print(f"\nthe refresh asked Apache for: {dashboard}")
