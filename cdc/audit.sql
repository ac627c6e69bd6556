-- pgtide's audit SQL (cdc/audit.py, cdc/seal.py, cdc/retention.py), in the format of
-- cdc/queries.sql: `-- name: <name>`, a description line, the SQL.
-- Listing queries leave an absent filter NULL. They are executed unprepared, so each
-- execution is planned with its values: `NULL IS NULL OR …` folds away and the planner
-- sees only the filters given, with their indexes (docs/audit.md).

-- name: list
-- Sequenced changes in (lo, hi) matching the filters, in seq order ({direction}).
SELECT o.seq, l.id, l.txid::text AS txid, l.at, l.schema_name, l.table_name, l.op,
       l.pk::text AS pk_json, l.new_row::text AS row_json, l.old_row::text AS old_json,
       l.changed, l.actor, l.origin, l.mutation_id, l.db_role
  FROM pgtide.sync_order o
  JOIN pgtide.sync_log l ON l.id = o.log_id
 WHERE o.seq > %(lo)s::bigint AND o.seq < %(hi)s::bigint
   AND (%(tables)s::text[] IS NULL OR l.table_name = ANY (%(tables)s::text[]))
   AND (%(ops)s::text[] IS NULL OR l.op = ANY (%(ops)s::text[]))
   AND (%(pk)s::jsonb IS NULL OR l.pk = %(pk)s::jsonb)
   AND (%(actor)s::text IS NULL OR l.actor = %(actor)s::text)
   AND (%(origin)s::text IS NULL OR l.origin = %(origin)s::text)
   AND (%(txid)s::xid8 IS NULL OR l.txid = %(txid)s::xid8)
   AND (%(from)s::timestamptz IS NULL OR l.at >= %(from)s::timestamptz)
   AND (%(to)s::timestamptz IS NULL OR l.at < %(to)s::timestamptz)
 ORDER BY o.seq {direction}
 LIMIT %(limit)s;

-- name: serial_plans
-- For the listing's transaction: no parallel workers. A page is at most 1,001 rows;
-- starting workers costs more than reading it, and the planner, blind to how the seq
-- range already implies the time filter, would pick a parallel scan and sort over a
-- walk that stops at the page's end (docs/audit.md).
SET LOCAL max_parallel_workers_per_gather = 0;

-- name: seq_floor
-- Every change at or after a time is above this seq: seals only grow in sealed_at, and
-- each row's `at` is at most its seal's sealed_at. NULL: no seal that late.
SELECT first_seq - 1 FROM pgtide.sync_seal
 WHERE sealed_at >= %(at)s::timestamptz
 ORDER BY sealed_at, seal_no
 LIMIT 1;

-- name: seq_ceiling
-- Every change before a time is below this seq: in a seal sealed before it, or in one
-- whose span [min_at, sealed_at] contains it (a transaction open across that time).
SELECT coalesce(greatest(
           (SELECT last_seq FROM pgtide.sync_seal
             WHERE sealed_at < %(at)s::timestamptz
             ORDER BY sealed_at DESC, seal_no DESC LIMIT 1),
           (SELECT max(last_seq) FROM pgtide.sync_seal
             WHERE tstzrange(min_at, sealed_at, '[]') @> %(at)s::timestamptz)), 0) + 1;

-- name: history
-- One row's changes (by table and key) in seq order, with the table's TRUNCATEs after
-- its first change (the caller keeps those that found the row present).
WITH mine AS (
    SELECT o.seq, l.*
      FROM pgtide.sync_log l JOIN pgtide.sync_order o ON o.log_id = l.id
     WHERE l.table_name = %(table)s AND l.pk = %(pk)s::jsonb
)
SELECT seq, id, txid::text AS txid, at, schema_name, table_name, op, pk::text AS pk_json,
       new_row::text AS row_json, old_row::text AS old_json, changed, actor, origin,
       mutation_id, db_role
  FROM mine
UNION ALL
SELECT o.seq, l.id, l.txid::text, l.at, l.schema_name, l.table_name, l.op, l.pk::text,
       l.new_row::text, l.old_row::text, l.changed, l.actor, l.origin, l.mutation_id, l.db_role
  FROM pgtide.sync_log l JOIN pgtide.sync_order o ON o.log_id = l.id
 WHERE l.table_name = %(table)s AND l.op = 'TRUNCATE'
   AND o.seq > (SELECT min(seq) FROM mine)
 ORDER BY seq;

-- name: verify_begin
-- verify reads seals and rows in one snapshot: the sequencer commits both together.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: removed_through
-- How far retention has removed (0: never ran).
SELECT coalesce(max(removed_through), 0) FROM pgtide.sync_retention;

-- name: verify_seals
-- Each seal with what its rows hash to now: the chained hash over the current rows'
-- digests (from the seal's stored prev_hash), their 8-byte prefixes and their count.
-- Seals wholly removed by retention come without the recomputed part.
SELECT s.seal_no, s.first_seq, s.last_seq, s.hash, s.prev_hash, s.digests,
       r.n, r.hash AS now_hash, r.prefixes AS now_prefixes
  FROM pgtide.sync_seal s
  LEFT JOIN LATERAL (
      SELECT count(*) AS n,
             sha256(s.prev_hash || coalesce(string_agg(x.d, ''::bytea ORDER BY x.seq), ''::bytea))
                 AS hash,
             coalesce(string_agg(substr(x.d, 1, 8), ''::bytea ORDER BY x.seq), ''::bytea)
                 AS prefixes
        FROM (SELECT o.seq, pgtide.log_digest_v1(o.seq, l) AS d
                FROM pgtide.sync_order o JOIN pgtide.sync_log l ON l.id = o.log_id
               WHERE o.seq BETWEEN s.first_seq AND s.last_seq) AS x
  ) AS r ON s.last_seq > %(removed_through)s::bigint
 ORDER BY s.seal_no;

-- name: verify_rows
-- The rows of a seq range as they are now: every pgtide.sync_order row (with its digest, NULL
-- when its pgtide.sync_log row is gone) and every pgtide.sync_log row it should point at.
SELECT o.seq, o.log_id, CASE WHEN l.id IS NULL THEN NULL
                             ELSE pgtide.log_digest_v1(o.seq, l) END AS digest
  FROM pgtide.sync_order o LEFT JOIN pgtide.sync_log l ON l.id = o.log_id
 WHERE o.seq BETWEEN %(first)s::bigint AND %(last)s::bigint
 ORDER BY o.seq;

-- name: verify_unsealed
-- pgtide.sync_order rows no seal covers: above the last seal, or below the first seq.
SELECT o.seq, o.log_id FROM pgtide.sync_order o
 WHERE o.seq > (SELECT max(last_seq) FROM pgtide.sync_seal) OR o.seq < 1
 ORDER BY o.seq
 LIMIT %(limit)s;

-- name: retention_lock
-- One retention run per database at a time (session-level, released after the run).
SELECT pg_try_advisory_lock(%(key)s::bigint);

-- name: retention_unlock
-- Release the run's lock.
SELECT pg_advisory_unlock(%(key)s::bigint);

-- name: retention_plan
-- Where a run stands: the cutoff, how far earlier runs removed, and the last seq it may
-- remove: the end of the last whole seal, from the first retained one on, whose rows are
-- all older than the cutoff. Unsequenced rows are in no seal, so they are never reached.
WITH c AS (SELECT now() - %(keep)s::interval AS cutoff),
     r AS (SELECT coalesce(max(removed_through), 0) AS through FROM pgtide.sync_retention)
SELECT c.cutoff, r.through,
       coalesce((SELECT s.first_seq - 1 FROM pgtide.sync_seal s
                  WHERE s.last_seq > r.through AND s.max_at >= c.cutoff
                  ORDER BY s.last_seq LIMIT 1),
                (SELECT max(last_seq) FROM pgtide.sync_seal)) AS target
  FROM c, r;

-- name: retention_start
-- Record a run before its first batch.
INSERT INTO pgtide.sync_retention (keep_interval, cutoff, removed_through)
VALUES (%(keep)s::interval, %(cutoff)s, %(through)s)
RETURNING run_id;

-- name: retention_allow
-- Lift the append-only guard for this transaction only (schema/triggers.sql).
SELECT set_config('pgtide.retention', 'on', true);

-- name: retention_batch
-- Remove the sequenced changes in (from, to] from pgtide.sync_order and pgtide.sync_log, and move the
-- run's record in the same transaction.
WITH o AS (
    DELETE FROM pgtide.sync_order WHERE seq > %(from)s::bigint AND seq <= %(to)s::bigint
    RETURNING log_id
), l AS (
    DELETE FROM pgtide.sync_log WHERE id IN (SELECT log_id FROM o)
    RETURNING 1
)
UPDATE pgtide.sync_retention
   SET removed_through = %(to)s::bigint,
       removed_rows = removed_rows + (SELECT count(*) FROM l),
       updated_at = now()
 WHERE run_id = %(run)s
RETURNING removed_rows;

-- name: key_columns
-- A tracked table's key columns, in key order, with their types (first schema by name).
SELECT t.schema_name, a.attname::text, ty.typname::text, ty.typcategory::text
  FROM pgtide.sync_tracked t
  JOIN pg_namespace n ON n.nspname = t.schema_name
  JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = ANY (t.pk_columns)
  JOIN pg_type ty ON ty.oid = a.atttypid
 WHERE t.table_name = %(table)s
 ORDER BY t.schema_name, array_position(t.pk_columns, a.attname::text);

-- name: retention_notify
-- Tell listeners, when the batch commits, that the log now starts after this seq.
SELECT pg_notify('pgtide_retention', %(to)s::text);
