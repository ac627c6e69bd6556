"""`pgtide audit verify`: recompute the seal chain and name the first row tampered with.

The sequencer seals each batch in the statement that sequences it
(`sequence_batch`): seal k covers seqs first_seq..last_seq and stores

    hash(k)  = sha256(hash(k-1) || digest(first_seq) || ... || digest(last_seq))
    digests  = the first 8 bytes of each row's digest, in seq order

where digest = `pgtide.log_digest_v1` (schema/migrations/0005_audit.sql). Seal 0
is the genesis (no rows, hash sha256 of nothing).

Verification, in one REPEATABLE READ snapshot (the sequencer commits rows and
seal together, so a snapshot never sees one without the other):

1. the chain: seal numbers consecutive from 0, each prev_hash equal to the
   previous seal's hash, each range starting right after the previous one;
2. every seal whose rows are retained: the database recomputes the chained hash
   and the digest prefixes over the current rows; a seal that differs is read
   row by row and compared with its stored prefixes, which names the row that
   was changed, removed or put in another's place. Retention removes whole
   ranges from the start (recorded in pgtide.sync_retention); those seals keep only the
   chain check, and a seal cut by retention is checked on the rows it has left;
3. rows no seal covers (above the last seal) were inserted afterwards: the
   sequencer never commits a row without its seal.

Anyone who can rewrite pgtide.sync_seal can forge a consistent chain; the head hash
printed here is what to record elsewhere (docs/audit.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import psycopg

from cdc.audit import audit_queries

GENESIS = hashlib.sha256(b"").digest()
PREFIX = 8
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    """One finding: `kind` is changed, removed, inserted or seal; `seq` the row's position."""

    kind: str
    seq: int | None
    seal_no: int | None
    log_id: int | None
    detail: str


@dataclass
class Report:
    """What verify found. `intact_through` is the last seq before the first problem."""

    seals: int = 0
    rows: int = 0
    removed_through: int = 0
    last_seq: int = 0
    head_seal: int = 0
    head_hash: bytes = GENESIS
    problems: list[Problem] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """No problem found."""
        return not self.problems

    @property
    def intact_through(self) -> int:
        """The cursor up to which the log is verified intact."""
        seqs = [p.seq for p in self.problems if p.seq is not None]
        return min(seqs) - 1 if seqs else self.last_seq

    def add(self, problem: Problem) -> None:
        """Record a finding (the first MAX_PROBLEMS are kept)."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


def _row_problems(
    conn: psycopg.Connection[Any], report: Report, seal: tuple[Any, ...], from_seq: int
) -> None:
    """Compare a seal's current rows from `from_seq` on with its stored digest prefixes."""
    seal_no, first, last, _, _, stored = seal[:6]
    stored = bytes(stored)
    rows = conn.execute(audit_queries["verify_rows"], {"first": from_seq, "last": last}).fetchall()
    by_seq = {int(r[0]): r for r in rows}
    for seq in range(from_seq, last + 1):
        want = stored[(seq - first) * PREFIX : (seq - first + 1) * PREFIX]
        row = by_seq.get(seq)
        if row is None:
            report.add(Problem("removed", seq, seal_no, None,
                               f"seq {seq} was removed after seal {seal_no}"))  # fmt: skip
        elif row[2] is None:
            report.add(Problem("removed", seq, seal_no, int(row[1]),
                               f"seq {seq}: its pgtide.sync_log row (id {row[1]}) was removed "
                               f"after seal {seal_no}"))  # fmt: skip
        elif bytes(row[2])[:PREFIX] != want:
            report.add(Problem("changed", seq, seal_no, int(row[1]),
                               f"seq {seq} (pgtide.sync_log id {row[1]}) was changed "
                               f"after seal {seal_no}"))  # fmt: skip


def verify(conn: psycopg.Connection[Any]) -> Report:
    """Check the whole retained log against the seal chain (`conn` must be autocommit)."""
    report = Report()
    with conn.transaction():
        conn.execute(audit_queries["verify_begin"])
        through_row = conn.execute(audit_queries["removed_through"]).fetchone()
        report.removed_through = int(through_row[0]) if through_row else 0
        _check_seals(conn, report)
        for seq, log_id in conn.execute(
            audit_queries["verify_unsealed"], {"limit": MAX_PROBLEMS}
        ).fetchall():
            report.add(Problem("inserted", int(seq), None, int(log_id),
                               f"seq {seq} (pgtide.sync_log id {log_id}) is covered by no seal: "
                               "inserted after sealing"))  # fmt: skip
    report.problems.sort(key=lambda p: (p.seq is None, p.seq or 0))
    return report


def _check_seals(conn: psycopg.Connection[Any], report: Report) -> None:
    prev: tuple[Any, ...] | None = None
    drill: list[tuple[tuple[Any, ...], int]] = []  # (seal, first seq to read)
    with conn.cursor(name="pgtide_verify") as cur:
        cur.execute(audit_queries["verify_seals"], {"removed_through": report.removed_through})
        while batch := cur.fetchmany(2000):
            for seal in batch:
                _check_link(report, prev, seal)
                from_seq = _check_rows(report, seal)
                if from_seq is not None:
                    drill.append((seal, from_seq))
                prev = seal
    if prev is None:
        report.add(Problem("seal", None, 0, None, "the genesis seal (seal 0) is missing"))
        return
    report.head_seal, report.head_hash, report.last_seq = int(prev[0]), bytes(prev[3]), prev[2]
    # Row by row only where a seal differs (a named cursor cannot share the connection).
    for seal, from_seq in drill:
        before = len(report.problems)
        _row_problems(conn, report, seal, from_seq)
        cut = from_seq > seal[1]  # cut by retention: read because it cannot be hashed whole
        if cut:
            report.rows += int(seal[2]) - from_seq + 1
        elif len(report.problems) == before:
            # Every row matches its stored prefix, yet the hash differs: the seal was rewritten.
            report.add(Problem("seal", int(seal[1]), int(seal[0]), None,
                               f"seal {seal[0]} was altered (its hash no longer matches "
                               "its rows)"))  # fmt: skip


def _check_link(report: Report, prev: tuple[Any, ...] | None, seal: tuple[Any, ...]) -> None:
    seal_no, first, hash_, prev_hash = seal[0], seal[1], seal[3], seal[4]
    report.seals += 1
    if prev is None:
        if seal_no != 0 or bytes(hash_) != GENESIS or bytes(prev_hash) != b"":
            report.add(Problem("seal", None, seal_no, None,
                               f"the chain does not start at the genesis seal (found seal "
                               f"{seal_no})"))  # fmt: skip
        return
    if seal_no != prev[0] + 1 or bytes(prev_hash) != bytes(prev[3]) or first != prev[2] + 1:
        report.add(Problem("seal", first, seal_no, None,
                           f"seal {seal_no} does not follow seal {prev[0]} in the chain "
                           "(a seal was removed, inserted or rewritten)"))  # fmt: skip


def _check_rows(report: Report, seal: tuple[Any, ...]) -> int | None:
    """Compare the recomputed part; return the seq to read rows from if they must be read."""
    _, first, last, hash_, _, stored, n, now_hash, now_prefixes = seal
    if last < first or last <= report.removed_through:
        return None  # the genesis, or wholly removed by retention: chain check only
    if first <= report.removed_through:
        return report.removed_through + 1  # cut by retention: check the rows left
    report.rows += int(n)
    expected = last - first + 1
    if n == expected and bytes(now_hash) == bytes(hash_) and bytes(now_prefixes) == bytes(stored):
        return None
    return int(first)
