"""The dashboard and the branch app in a real browser: Debian's Chromium, driven by Playwright,
against a real `pgtide serve` with auth and a real PostgreSQL.

Nothing waits on a clock: every step waits for a DOM state, a network event or a
row in the database. Chromium missing is a loud skip on a developer's machine (so
the README's `pytest -q` passes on a fresh one) and a failure where
`PGTIDE_REQUIRE_BROWSER=1` (`.ci/run` sets it, after installing Chromium); Chromium
failing to start is always a failure. Screenshots are taken only when
`PGTIDE_SCREENSHOTS` names a folder; they are not committed.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from psycopg.types.json import Jsonb

from api.app import create_app
from cdc import db
from cdc.settings import Settings
from tests.auth import make_token
from tests.live import Server

CHROMIUM = os.environ.get("PGTIDE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(os.environ["PGTIDE_SCREENSHOTS"]) if os.environ.get("PGTIDE_SCREENSHOTS") else None
WAIT_MS = 10_000  # the longest any one step may take before the test fails


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module; each test opens its own contexts (separate storage)."""
    if not Path(CHROMIUM).exists():
        reason = (
            f"BROWSER TESTS NOT RUN: Chromium is not installed at {CHROMIUM} "
            "(`apt-get install -y chromium`, as .ci/run does, or PGTIDE_CHROMIUM=<binary>)"
        )
        if os.environ.get("PGTIDE_REQUIRE_BROWSER") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except PlaywrightError as exc:
            pytest.fail(f"Chromium at {CHROMIUM} did not start: {exc}", pytrace=False)
        yield b
        b.close()


@pytest.fixture
def branch_ids(db_url: str) -> dict[str, str]:
    with db.connect(db_url) as conn:
        rows = conn.execute(
            "INSERT INTO branches (code, name) VALUES ('A', 'Alfama'), ('B', 'Baixa') "
            "RETURNING code, id::text"
        ).fetchall()
    return {r[0]: r[1] for r in rows}


@pytest.fixture
def server(db_url: str, branch_ids: dict[str, str]) -> Iterator[Server]:
    make_token(db_url, "bootstrap", "admin")
    srv = Server(db_url, auth=True).start()
    yield srv
    srv.stop()


def new_context(browser: Browser) -> BrowserContext:
    ctx = browser.new_context(viewport={"width": 1360, "height": 860})
    ctx.set_default_timeout(WAIT_MS)
    return ctx


def open_page(ctx: BrowserContext, url: str, token: str, errors: list[str]) -> Page:
    """Open a pgtide page, sign in with `token` and wait until its stream is live."""
    page = ctx.new_page()
    # A script error fails the test at its end, with the message.
    page.on("pageerror", lambda exc: errors.append(f"{url}: {exc}"))
    page.goto(url)
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    page.wait_for_selector('#status[data-status="live"]')
    return page


def shot(page: Page, name: str) -> None:
    if SHOTS is None:
        return  # nothing left behind unless asked for
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def scalar(url: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    with db.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def test_pages_and_static_files_are_public_with_cache_and_security_headers() -> None:
    asyncio.run(_check_static_files())


async def _check_static_files() -> None:
    # The files need no database: the app in process, without its lifespan, serves them.
    transport = httpx.ASGITransport(app=create_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://pgtide") as c:
        for path in ("/", "/branch", "/static/pgtide.js", "/static/sw.js", "/static/app.css"):
            r = await c.get(path)
            assert r.status_code == 200, path
            assert r.headers["cache-control"] == "no-cache"
            assert r.headers["content-security-policy"].startswith("default-src 'self'")
            assert r.headers["x-content-type-options"] == "nosniff"
            again = await c.get(path, headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304, path
        assert (await c.get("/static/sw.js")).headers["service-worker-allowed"] == "/"
        js = await c.get("/static/pgtide.js")
        assert js.headers["content-type"].startswith("text/javascript")
        for bad in ("/static/nope.js", "/static/%2e%2e/web.py", "/static/..%2fweb.py", "/static/"):
            r = await c.get(bad)
            assert r.status_code == 404, bad
            assert r.headers["content-type"] == "application/problem+json"


def test_dashboard_shows_a_plain_sql_insert_within_a_second(
    browser: Browser, server: Server, db_url: str, branch_ids: dict[str, str]
) -> None:
    reader = make_token(db_url, "wall-screen", "read")
    errors: list[str] = []
    ctx = new_context(browser)
    page = open_page(ctx, server.base + "/", reader, errors)

    row_id = str(uuid.uuid4())
    with db.connect(db_url) as conn:
        # Stamped before the statement, so the measure includes the insert and its commit.
        wall, started = time.time(), time.monotonic()
        conn.execute(
            "INSERT INTO clients (id, branch_id, full_name) VALUES (%s, %s, 'Plain SQL')",
            (row_id, branch_ids["A"]),
        )
    row = page.wait_for_selector(f'#feed tr[data-key="{row_id}"]', timeout=5000)
    elapsed = time.monotonic() - started
    assert row is not None
    shown_at = float(row.get_attribute("data-shown-at") or 0) / 1000
    print(f"\ncommit -> DOM: {elapsed * 1000:.0f} ms seen by the test, "
          f"{(shown_at - wall) * 1000:.0f} ms by the page's clock")  # fmt: skip
    assert elapsed < 1.0, f"the INSERT took {elapsed:.3f} s to show"
    assert row.get_attribute("data-table") == "clients"
    assert "INSERT" in row.inner_text()
    assert page.inner_text('#counts tr[data-table="clients"]').split() == ["clients", "1"]
    assert page.inner_text("#total") == "1"

    # A token without the audit scope gets the row, and a sentence instead of its history.
    row.click()
    page.wait_for_selector("#history-denied")
    assert "audit" in page.inner_text("#history-denied")
    assert '"full_name": "Plain SQL"' in page.inner_text("#detail-row")
    assert errors == []
    ctx.close()


def test_offline_branch_app_queues_survives_a_reload_and_writes_exactly_once(
    browser: Browser, server: Server, db_url: str, branch_ids: dict[str, str]
) -> None:
    admin = make_token(db_url, "head-office", "admin")
    tablet = make_token(db_url, "tablet-a", "read,write", branch=branch_ids["A"])
    errors: list[str] = []
    dash_ctx, app_ctx = new_context(browser), new_context(browser)
    dash = open_page(dash_ctx, server.base + "/", admin, errors)
    # A new branch, with no rows yet: the pinned token reads its own branch's row, and
    # the app shows its name (not its id) in the header and offers no other branch.
    app = open_page(app_ctx, server.base + "/branch", tablet, errors)
    assert app.inner_text("#branch-name") == "Alfama"
    assert app.eval_on_selector_all("#branch option", "os => os.map(o => o.value)") == [
        branch_ids["A"]
    ]
    # The service worker has cached the app's files: the page can reload offline.
    app.wait_for_selector('#offline-ready[data-ready="yes"]')

    app_ctx.set_offline(True)
    app.wait_for_selector('#network[data-network="offline"]')
    app.fill("#client-name", "Ana Offline")
    app.fill("#client-email", "ana@example.org")
    app.click("#client-form button[type=submit]")
    app.wait_for_selector("#pending li >> nth=0")
    # The new client is not on the server yet, but it can already get an appointment.
    app.select_option("#appointment-client", label="Ana Offline (not sent yet)")
    app.fill("#appointment-notes", "first visit")
    app.click("#appointment-form button[type=submit]")
    app.wait_for_selector("#pending li >> nth=1")
    app.fill("#client-name", "Bruno Offline")
    app.click("#client-form button[type=submit]")
    app.wait_for_selector("#pending li >> nth=2")

    # Offline means the service worker cannot reach the server either.
    worker_fetch = "fetch('/health').then(() => 'reached', () => 'failed')"
    assert app_ctx.service_workers[0].evaluate(worker_fetch) == "failed"
    app.reload()  # still offline
    delivery = app.evaluate("performance.getEntriesByType('navigation')[0].deliveryType")
    assert delivery == "cache-storage", "the offline reload must come from the service worker"
    app.wait_for_selector("#pending li >> nth=2")
    assert app.inner_text("#branch-name") == "Alfama"  # remembered for the tab
    queued = app.eval_on_selector_all(
        "#pending li", "els => els.map(e => ({...e.dataset}))"
    )  # fmt: skip
    assert [q["resource"] for q in queued] == ["clients", "appointments", "clients"]
    offline = ["Ana Offline", "Bruno Offline"]
    assert scalar(db_url, "SELECT count(*) FROM clients WHERE full_name = ANY(%s)", (offline,)) == 0

    with app.expect_response("**/api/sync/push") as pushed:
        app_ctx.set_offline(False)
    assert [r["status"] for r in pushed.value.json()["results"]] == ["applied"] * 3
    app.wait_for_selector("#pending-empty:not([hidden])")
    assert app.locator("#pending li").count() == 0

    # Exactly once: one row each, one INSERT each in pgtide.sync_log, one recorded mutation each.
    ana, appt, bruno = (q["id"] for q in queued)
    assert scalar(db_url, "SELECT count(*) FROM clients WHERE id IN (%s, %s)", (ana, bruno)) == 2
    assert scalar(db_url, "SELECT client_id::text FROM appointments WHERE id = %s", (appt,)) == ana
    mids = [q["mutationId"] for q in queued]
    with db.connect(db_url) as conn:
        logged = conn.execute(
            "SELECT mutation_id, op, table_name, pk->>'id', actor, origin FROM pgtide.sync_log "
            "WHERE mutation_id = ANY(%s) ORDER BY id",
            (mids,),
        ).fetchall()
        recorded = conn.execute(
            "SELECT count(*) FROM pgtide.sync_mutations WHERE mutation_id = ANY(%s)", (mids,)
        ).fetchone()
    assert logged == [
        (mids[0], "INSERT", "clients", ana, "tablet-a", "branch-app"),
        (mids[1], "INSERT", "appointments", appt, "tablet-a", "branch-app"),
        (mids[2], "INSERT", "clients", bruno, "tablet-a", "branch-app"),
    ]
    assert recorded == (3,)

    # The dashboard in the other context shows all three, each once.
    for key in (ana, appt, bruno):
        dash.wait_for_selector(f'#feed tr[data-key="{key}"]')
        assert dash.locator(f'#feed tr[data-key="{key}"]').count() == 1
    dash.click(f'#feed tr[data-key="{ana}"]')
    dash.wait_for_selector("#history ol.history li")
    assert "tablet-a" in dash.inner_text("#history")
    shot(dash, "dashboard.png")
    assert errors == []
    dash_ctx.close()
    app_ctx.close()


def test_a_push_whose_answer_is_lost_is_resent_by_the_next_tab_and_applied_once(
    browser: Browser, server: Server, db_url: str, branch_ids: dict[str, str]
) -> None:
    tablet = make_token(db_url, "tablet-a", "read,write", branch=branch_ids["A"])
    errors: list[str] = []
    ctx = new_context(browser)
    app = open_page(ctx, server.base + "/branch", tablet, errors)

    # The server applies the push, but the tab never sees the answer: as if it were
    # closed mid-flush (the connection drops after the request reached the server).
    applied: list[dict[str, Any]] = []

    def lose_the_answer(route: Any) -> None:
        applied.append(route.fetch().json())
        route.abort("connectionreset")

    ctx.route("**/api/sync/push", lose_the_answer)
    with app.expect_event("requestfailed"):
        app.fill("#client-name", "Carla Once")
        app.click("#client-form button[type=submit]")
    assert [r["status"] for r in applied[0]["results"]] == ["applied"]
    app.close()  # the tab closes with the mutation still queued
    ctx.unroute("**/api/sync/push")
    assert scalar(db_url, "SELECT count(*) FROM clients WHERE full_name = 'Carla Once'") == 1

    # The next tab (same browser profile, so the same IndexedDB) sends it again at start.
    page = ctx.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.base + "/branch")
    page.fill("#token", tablet)
    with page.expect_response("**/api/sync/push") as pushed:
        page.click("#login button[type=submit]")
    assert [r["status"] for r in pushed.value.json()["results"]] == ["duplicate"]
    page.wait_for_selector("#pending-empty:not([hidden])")
    carla = "SELECT count(*) FROM pgtide.sync_log WHERE new_row->>'full_name' = 'Carla Once'"
    assert scalar(db_url, carla) == 1
    assert scalar(db_url, "SELECT count(*) FROM clients WHERE full_name = 'Carla Once'") == 1
    assert errors == []
    ctx.close()


def test_a_conflicting_offline_update_shows_the_servers_row(
    browser: Browser, server: Server, db_url: str, branch_ids: dict[str, str]
) -> None:
    admin = make_token(db_url, "head-office", "admin")
    tablet = make_token(db_url, "tablet-a", "read,write", branch=branch_ids["A"])
    with db.connect(db_url) as conn:
        product = conn.execute(
            "INSERT INTO products (branch_id, sku, name, price) VALUES (%s, 'P1', 'Aspirin', 3.5) "
            "RETURNING id::text",
            (branch_ids["A"],),
        ).fetchone()
        assert product is not None
        request = conn.execute(
            "INSERT INTO stock_requests (branch_id, product_id, quantity) VALUES (%s, %s, 12) "
            "RETURNING id::text",
            (branch_ids["A"], product[0]),
        ).fetchone()
        assert request is not None
    req_id = request[0]
    errors: list[str] = []
    ctx = new_context(browser)
    app = open_page(ctx, server.base + "/branch", tablet, errors)
    app.wait_for_selector(f'#stock-request option[value="{req_id}"]', state="attached")

    ctx.set_offline(True)
    app.wait_for_selector('#network[data-network="offline"]')
    app.select_option("#stock-request", req_id)
    app.select_option("#stock-status", "approved")
    app.click("#stock-form button[type=submit]")
    app.wait_for_selector(f'#pending li[data-id="{req_id}"]')

    # Meanwhile head office cancels the request.
    r = httpx.patch(
        f"{server.base}/api/stock_requests/{req_id}",
        json={"status": "cancelled"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert r.status_code == 200 and r.json()["data"]["version"] == 2

    ctx.set_offline(False)
    item = app.locator(f'#conflicts li[data-state="conflict"][data-id="{req_id}"]')
    item.wait_for()
    assert item.get_attribute("data-server-version") == "2"
    lines = item.inner_text().split("\n")
    assert any(line.split() == ["status", "approved", "cancelled"] for line in lines)
    assert app.locator("#pending li").count() == 0
    status = "SELECT status FROM stock_requests WHERE id = %s"
    assert scalar(db_url, status, (req_id,)) == "cancelled"
    shot(app, "branch-app.png")

    # "Apply mine on top": sent again against the server's version, and applied.
    with app.expect_response("**/api/sync/push") as pushed:
        item.locator('button[data-action="retry"]').click()
    assert [x["status"] for x in pushed.value.json()["results"]] == ["applied"]
    app.wait_for_selector(f'#conflicts li[data-id="{req_id}"]', state="detached")
    with db.connect(db_url) as conn:
        row = conn.execute(
            "SELECT status, version FROM stock_requests WHERE id = %s", (req_id,)
        ).fetchone()
    assert row == ("approved", 3)
    assert errors == []
    ctx.close()


def test_dashboard_resumes_after_a_server_restart_and_misses_nothing(
    browser: Browser, server: Server, db_url: str, branch_ids: dict[str, str]
) -> None:
    reader = make_token(db_url, "wall-screen", "read")
    errors: list[str] = []
    ctx = new_context(browser)
    page = open_page(ctx, server.base + "/", reader, errors)

    def insert(name: str) -> str:
        with db.connect(db_url) as conn:
            row = conn.execute(
                "INSERT INTO clients (branch_id, full_name) VALUES (%s, %s) RETURNING id::text",
                (branch_ids["B"], name),
            ).fetchone()
        assert row is not None
        return str(row[0])

    first = insert("before the restart")
    page.wait_for_selector(f'#feed tr[data-key="{first}"]')
    server.stop()
    page.wait_for_selector('#status[data-status="reconnecting"]')
    during = [insert(f"while down {i}") for i in range(5)]
    server.start()
    for key in during:
        page.wait_for_selector(f'#feed tr[data-key="{key}"]')
    page.wait_for_selector('#status[data-status="live"]')
    keys = page.eval_on_selector_all("#feed tr", "els => els.map(e => e.dataset.key)")
    assert sorted(keys) == sorted([first, *during]), "each change shows exactly once"
    assert errors == []
    ctx.close()


# Every element of the detail panel within the viewport and none scrolling sideways
# (a long value wraps instead of being clipped or widening the panel), nor the feed.
OVERFLOWS = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const e of [document.querySelector('#detail'), ...document.querySelectorAll('#detail *')]) {
    const box = e.getBoundingClientRect();
    const name = e.tagName + (e.id ? '#' + e.id : '') + (e.className ? '.' + e.className : '');
    if (box.right > width + 0.5) out.push(`${name} ends at ${box.right} > ${width}`);
    if (e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1) {
      out.push(`${name} scrolls: ${e.scrollWidth} > ${e.clientWidth}`);
    }
  }
  if (document.documentElement.scrollWidth > width) out.push('the page scrolls sideways');
  const feed = document.querySelector('.feed');  // beside the panel, narrower for it
  if (feed.scrollWidth > feed.clientWidth) out.push(`the feed scrolls: ${feed.scrollWidth}`);
  return out;
}"""


def test_a_rows_detail_and_history_wrap_long_values_at_1400_by_900(
    browser: Browser, server: Server, db_url: str, branch_ids: dict[str, str]
) -> None:
    admin = make_token(db_url, "head-office", "admin")
    errors: list[str] = []
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(WAIT_MS)
    page = open_page(ctx, server.base + "/", admin, errors)

    unbroken = "x" * 2000  # no space anywhere to break at
    agreement = {
        "terms": {"net_days": 30, "note": "y" * 600, "tiers": [{"from": 0, "rebate": "z" * 300}]},
        "contact": {"url": "https://example.org/" + "path/" * 60},
    }
    with db.connect(db_url) as conn:
        row = conn.execute(
            "INSERT INTO distributors (branch_id, name, agreement) VALUES (%s, %s, %s) "
            "RETURNING id::text",
            (branch_ids["A"], unbroken, Jsonb(agreement)),
        ).fetchone()
        assert row is not None
        agreement["terms"]["note"] = "w" * 700
        conn.execute(
            "UPDATE distributors SET name = %s, agreement = %s WHERE id = %s",
            ("v" * 1500, Jsonb(agreement), row[0]),
        )
    key = row[0]
    page.wait_for_selector(f'#feed tr[data-key="{key}"].op-update').click()
    page.wait_for_selector("#history ol.history li >> nth=1")
    assert "v" * 1500 in page.inner_text("#detail-row")
    shot(page, "dashboard-detail.png")  # before the check, to see what it found
    page.eval_on_selector("#detail", "e => { e.scrollTop = e.scrollHeight; }")
    shot(page, "dashboard-history.png")  # the panel scrolled to its last change
    overflowing: list[str] = page.evaluate(OVERFLOWS)
    assert not overflowing, "\n".join(overflowing)
    assert errors == []
    ctx.close()
