"""Retention: remove sequenced changes older than a limit, oldest first, in short batches.

A run works in seq order from where the last one stopped, and stops before the
first seal holding a change newer than the cutoff (`now() - keep`, by the
database's clock): seals bound their rows' `at`, so no newer change is ever
removed, and unsequenced changes (in no seal) are never reached. Each batch is
its own transaction: it lifts the append-only guard for itself
(`pgtide.retention = on`, transaction-local), deletes up to `batch` seqs from
pgtide.sync_order and their pgtide.sync_log rows, and moves the run's record in
pgtide.sync_retention, and NOTIFYs `pgtide_retention` with the seq the log now
starts after. A crash loses at most the batch in flight; the next run goes on
from the record. The seals of removed ranges stay (cdc/seal.py).

One run per database at a time (a session advisory lock), so several `serve`
processes with PGTIDE_RETENTION_KEEP take turns instead of competing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from cdc import db
from cdc.audit import audit_queries
from cdc.errors import PgtideError

log = logging.getLogger(__name__)

RETENTION_LOCK_KEY = 0x70677469646572  # 'pgtider'
DEFAULT_BATCH = 10_000


@dataclass
class RetentionReport:
    """What one run did; `skipped` when another run held the lock."""

    cutoff: datetime | None = None
    removed_through: int = 0
    removed_rows: int = 0
    batches: int = 0
    skipped: bool = False


def run_retention(
    conn: psycopg.Connection[Any],
    keep: timedelta,
    *,
    batch: int = DEFAULT_BATCH,
    on_batch: Callable[[RetentionReport], None] | None = None,
) -> RetentionReport:
    """Remove sequenced changes older than `keep`; `conn` must be autocommit."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    report = RetentionReport()
    got = conn.execute(audit_queries["retention_lock"], {"key": RETENTION_LOCK_KEY}).fetchone()
    if not (got and got[0]):
        report.skipped = True
        return report
    try:
        plan = conn.execute(audit_queries["retention_plan"], {"keep": keep}).fetchone()
        assert plan is not None
        report.cutoff, through, target = plan[0], int(plan[1]), int(plan[2] or 0)
        report.removed_through = through
        if target <= through:
            return report
        run = conn.execute(
            audit_queries["retention_start"],
            {"keep": keep, "cutoff": report.cutoff, "through": through},
        ).fetchone()
        assert run is not None
        while through < target:
            upto = min(through + batch, target)
            with conn.transaction():
                conn.execute(audit_queries["retention_allow"])
                row = conn.execute(
                    audit_queries["retention_batch"],
                    {"from": through, "to": upto, "run": run[0]},
                ).fetchone()
                conn.execute(audit_queries["retention_notify"], {"to": upto})
            through = upto
            report.removed_through = through
            report.removed_rows = int(row[0]) if row else report.removed_rows
            report.batches += 1
            if on_batch is not None:
                on_batch(report)
        log.info("retention: removed %d changes through seq %d (older than %s)",
                 report.removed_rows, through, report.cutoff)  # fmt: skip
        return report
    finally:
        conn.execute(audit_queries["retention_unlock"], {"key": RETENTION_LOCK_KEY})


async def run_periodically(url: str, keep: timedelta, interval_s: float, batch: int) -> None:
    """Run retention every `interval_s` seconds, for `serve`; failures are logged, not fatal."""
    while True:
        try:
            report = await asyncio.to_thread(_run_once, url, keep, batch)
            if report.skipped:
                log.debug("retention: another process is running it")
        except (psycopg.Error, PgtideError, OSError) as exc:
            log.warning("retention: %s; next try in %.0fs", db.first_line(exc), interval_s)
        await asyncio.sleep(interval_s)


def _run_once(url: str, keep: timedelta, batch: int) -> RetentionReport:
    with db.connect(url, application_name="pgtide-retention") as conn:
        return run_retention(conn, keep, batch=batch)
