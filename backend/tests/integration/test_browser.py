"""In a real browser (headless Chromium): a page on one loopback origin calls the API
on another with a bearer token and a JSON body (preflight included); a page from an
origin not in CORS_ORIGINS is blocked; a credentialed fetch carrying the headers fetch
wrappers add (Cache-Control, X-Requested-With) works with CORS_ALLOW_CREDENTIALS and
is blocked without it; Swagger UI renders with every request kept local.
"""

import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.factories import new_user_id, tasks_url
from tests.jwt_helpers import SECRET, hs_token
from tests.server import free_port, running_server

CHROMIUM = "/usr/bin/chromium"
FETCH = """async ([api, token]) => {
  try {
    const r = await fetch(api, {
      method: "POST",
      headers: {"Authorization": "Bearer " + token,
                "Content-Type": "application/json"},
      body: JSON.stringify({title: "from the browser", tags: ["Web"]}),
    });
    return {status: r.status, body: await r.json(),
            location: r.headers.get("Location"),
            requestId: r.headers.get("X-Request-ID")};
  } catch (error) {
    return {blocked: String(error)};
  }
}"""


# What a frontend with cookie sessions (Better Auth) and a fetch wrapper sends: cookies
# included, a bearer token, cache-busting headers; the trailing slash some routers add.
CREDENTIALED_FETCH = """async ([api, token]) => {
  const headers = {"Authorization": "Bearer " + token,
                   "Cache-Control": "no-cache",
                   "X-Requested-With": "XMLHttpRequest"};
  try {
    const created = await fetch(api + "/", {
      method: "POST", credentials: "include",
      headers: {...headers, "Content-Type": "application/json"},
      body: JSON.stringify({title: "with credentials"}),
    });
    const listed = await fetch(api + "/", {credentials: "include", headers});
    return {created: created.status, listed: listed.status,
            titles: (await listed.json()).map((t) => t.title),
            redirected: listed.redirected};
  } catch (error) {
    return {blocked: String(error)};
  }
}"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Two static origins: http://127.0.0.1:<allowed> and http://127.0.0.1:<other>."""
    root: Path = tmp_path_factory.mktemp("site")
    (root / "index.html").write_text("<!doctype html><title>frontend</title><p>hi</p>")
    servers = [
        ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
        for _ in range(2)
    ]
    for server in servers:
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        allowed, other = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
        yield allowed, other
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def api(database_url: str, engine: object, pages: tuple[str, str]) -> Iterator[str]:
    allowed, _ = pages
    env = {
        "CORS_ORIGINS": allowed,
        "CORS_ALLOW_CREDENTIALS": "true",
        "BETTER_AUTH_SECRET": SECRET,
    }
    with running_server(database_url, port=free_port(), **env) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def api_without_credentials(
    database_url: str, engine: object, pages: tuple[str, str]
) -> Iterator[str]:
    allowed, _ = pages
    env = {"CORS_ORIGINS": allowed, "BETTER_AUTH_SECRET": SECRET}
    with running_server(database_url, port=free_port(), **env) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


def _fetch_from(
    browser: Browser, origin: str, api_url: str, token: str, script: str = FETCH
) -> Any:
    page = browser.new_page()
    try:
        page.goto(origin + "/index.html")
        return page.evaluate(script, [api_url, token])
    finally:
        page.close()


def test_allowed_origin_can_create_with_token_and_read_exposed_headers(
    browser: Browser, api: str, pages: tuple[str, str]
) -> None:
    user = new_user_id()
    result = _fetch_from(browser, pages[0], api + tasks_url(user), hs_token(user))
    assert result.get("status") == 201, result
    assert result["body"]["title"] == "from the browser"
    assert result["body"]["tags"] == ["web"]
    assert result["location"] == f"/api/{user}/tasks/{result['body']['id']}"
    assert result["requestId"]


def test_disallowed_origin_is_blocked_and_nothing_is_written(
    browser: Browser, api: str, pages: tuple[str, str]
) -> None:
    user = new_user_id()
    result = _fetch_from(browser, pages[1], api + tasks_url(user), hs_token(user))
    assert "blocked" in result, result
    listed = httpx.get(
        api + tasks_url(user), headers={"Authorization": f"Bearer {hs_token(user)}"}
    )
    assert listed.json() == []  # the preflight failed, so the POST was never sent


def test_credentialed_fetch_with_cache_control_works_from_an_allowed_origin(
    browser: Browser, api: str, pages: tuple[str, str]
) -> None:
    user = new_user_id()
    url = api + tasks_url(user)
    result = _fetch_from(browser, pages[0], url, hs_token(user), CREDENTIALED_FETCH)
    assert result == {
        "created": 201,
        "listed": 200,
        "titles": ["with credentials"],
        "redirected": False,
    }


def test_credentialed_fetch_is_blocked_when_credentials_are_not_allowed(
    browser: Browser, api_without_credentials: str, pages: tuple[str, str]
) -> None:
    user = new_user_id()
    url = api_without_credentials + tasks_url(user)
    result = _fetch_from(browser, pages[0], url, hs_token(user), CREDENTIALED_FETCH)
    assert "blocked" in result, result
    listed = httpx.get(url, headers={"Authorization": f"Bearer {hs_token(user)}"})
    assert listed.json() == []


def test_swagger_ui_renders_offline_with_an_authorize_button(
    browser: Browser, api: str
) -> None:
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        page.goto(api + "/docs")
        page.wait_for_selector(".opblock", timeout=15_000)
        assert page.locator(".btn.authorize").count() == 1
        assert page.locator(".opblock").count() >= 7
    finally:
        page.close()
    assert all(url.startswith(api) for url in requested), requested


def test_swagger_ui_fills_in_the_path_parameters_examples(
    browser: Browser, api: str
) -> None:
    """ "Try it out" starts from a user id and a task id to send, not empty boxes
    (a newcomer typed them by hand: Swagger UI reads no example from a schema)."""
    page = browser.new_page()
    try:
        page.goto(api + "/docs")
        page.wait_for_selector(".opblock", timeout=15_000)
        operation = page.locator(".opblock-get").filter(
            has_text="/api/{user_id}/tasks/{id}"
        )
        operation.first.locator(".opblock-summary").click()
        operation.first.locator(".try-out__btn").click()
        for name, value in (("user_id", "user_2f9a"), ("id", "1")):
            row = operation.first.locator(f'tr[data-param-name="{name}"]')
            assert row.locator("input").input_value() == value
    finally:
        page.close()


def test_swagger_ui_fills_in_clear_completeds_one_accepted_value(
    browser: Browser, api: str
) -> None:
    """`completed` takes only `true`: "Try it out" starts from it, not from an empty
    choice that the server refuses (a newcomer's trial)."""
    page = browser.new_page()
    try:
        page.goto(api + "/docs")
        page.wait_for_selector(".opblock", timeout=15_000)
        operation = page.locator("#operations-sync-clear_completed")
        operation.locator(".opblock-summary").click()
        operation.locator(".try-out__btn").click()
        row = operation.locator('tr[data-param-name="completed"]')
        assert row.locator("select").input_value() == "true"
    finally:
        page.close()
