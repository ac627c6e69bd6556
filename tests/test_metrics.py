"""GET /metrics: Prometheus text that moves with the engine."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cdc import db
from tests.live import Server, Stream


def scrape(base: str) -> dict[str, float]:
    r = httpx.get(f"{base}/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_count_published_and_delivered_events_and_requests(db_url: str) -> None:
    srv = Server(db_url).start()
    try:
        s = Stream(srv.base, "/events?tables=branches")
        s.until("synced")
        with db.connect(db_url) as conn:
            for i in range(5):
                conn.execute("INSERT INTO branches (code, name) VALUES (%s, 'x')", (f"M{i}",))
        s.changes(5)
        m = scrape(srv.base)
        s.close()
    finally:
        srv.stop()
    assert m["pgtide_events_published_total"] >= 5
    assert m["pgtide_events_delivered_total"] >= 5
    assert m["pgtide_subscribers"] == 1
    assert m["pgtide_listener_up"] == 1 and m["pgtide_database_up"] == 1
    assert m["pgtide_sequencer_leader"] == 1
    assert m["pgtide_sequenced_total"] >= 5
    assert m["pgtide_unsequenced_changes"] == 0
    assert m["pgtide_publish_lag_seconds_count"] >= 1
    assert m["pgtide_sync_log_bytes"] > 0
    assert m["pgtide_http_requests_total{method=GET,route=/events,status=200}"] == 1
    assert m["pgtide_http_requests_total{method=GET,route=/ready,status=200}"] >= 1


def test_cors_allows_only_the_configured_origins(db_url: str) -> None:
    srv = Server(db_url, env={"PGTIDE_CORS_ORIGINS": "https://dash.example"}).start()
    try:
        pre = httpx.options(
            f"{srv.base}/api/clients",
            headers={"Origin": "https://dash.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"},
        )  # fmt: skip
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://dash.example"
        other = httpx.get(f"{srv.base}/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        ok = httpx.get(f"{srv.base}/health", headers={"Origin": "https://dash.example"})
        assert ok.headers["access-control-allow-origin"] == "https://dash.example"
    finally:
        srv.stop()
