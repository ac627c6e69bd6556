"""A sequencer running a variant of its batch statement, for scripts/writer_cost.sh.

    DATABASE_URL=... python scripts/seq_variant.py current|noseal|noreturn|noseal-noreturn

`noseal` drops the seal from the batch statement (rows stay unsealed: a scratch
database only), `noreturn` returns no row images. POLL_MIN (ms) sets the busy poll;
ASYNC_COMMIT=1 commits the sequencer's batches asynchronously.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys

from cdc.queries import queries
from cdc.sequencer import Sequencer
from cdc.settings import Settings

NO_ROWS = (
    "SELECT ins.seq, ins.log_id AS id, NULL::text AS txid, now() AS at,"
    " ''::text AS schema_name, ''::text AS table_name, ''::text AS op, NULL::jsonb AS pk,"
    " NULL::jsonb AS new_row, NULL::jsonb AS old_row, NULL::text[] AS changed,"
    " NULL::text AS actor, NULL::text AS origin, NULL::text AS mutation_id,"
    " ''::text AS db_role FROM ins CROSS JOIN woke ORDER BY ins.seq"
)


def main() -> None:
    variant = sys.argv[1] if len(sys.argv) > 1 else "current"
    query = queries["sequence_batch"]
    if "noseal" in variant:
        query = re.sub(r"\), seal AS \(.*?\), upd AS \(", "), upd AS (", query, flags=re.S)
    if "noreturn" in variant:
        query = query[: query.index("SELECT ins.seq, l.id")] + NO_ROWS
    queries["sequence_batch"] = query  # type: ignore[assignment]
    if os.environ.get("ASYNC_COMMIT"):
        off = ", set_config('synchronous_commit', 'off', false)"
        queries["sequencer_session"] += off  # type: ignore[assignment]
    settings = Settings(poll_min_ms=float(os.environ.get("POLL_MIN", "1")))
    # on_batch set: the batch's rows are fetched and decoded, as in `pgtide serve`.
    sequencer = Sequencer(os.environ["DATABASE_URL"], settings, on_batch=lambda batch: None)
    asyncio.run(sequencer.run())


if __name__ == "__main__":
    main()
