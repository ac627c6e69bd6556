-- pgtide's runtime SQL. Each block: `-- name: <name>`, a description line, the SQL.
-- xid8 values cross the wire as text and are compared in SQL as xid8, never as text.

-- name: discover
-- One statement, so one snapshot: its xmax, its in-progress xids, and the committed
-- transactions not yet sequenced (txid >= next_xid or still listed as open), in order
-- of their largest log id.
WITH snap AS MATERIALIZED (SELECT pg_current_snapshot() AS s),
pending AS (
    SELECT txid, max(id) AS last_id, count(*) AS n
      FROM pgtide.sync_log
     WHERE txid >= %(next_xid)s::xid8 OR txid = ANY (%(open_xids)s::xid8[])
     GROUP BY txid
)
SELECT pg_snapshot_xmax(snap.s)::text AS xmax,
       ARRAY(SELECT x::text FROM pg_snapshot_xip(snap.s) AS x) AS xip,
       ARRAY(SELECT txid::text FROM pending ORDER BY last_id) AS txids,
       ARRAY(SELECT n FROM pending ORDER BY last_id) AS counts
  FROM snap;

-- name: sequence_batch
-- Append the chosen transactions' rows to pgtide.sync_order (transactions in the given order,
-- rows by id) and move the state in the same statement, hence the same commit; wake the
-- followers once; return the batch as changes. A stale leader collides on pgtide.sync_order's
-- keys or matches no state row (then no row comes back), and commits nothing.
-- The same statement seals the batch (docs/audit.md): one pgtide.sync_seal row chaining the
-- previous seal's hash with the digests of the rows sequenced since it (the batch, plus
-- any a sequencer without sealing left), computed by pgtide.seal_row_v1 (0005_audit),
-- so the seal commits atomically with the batch.
WITH ins AS (
    INSERT INTO pgtide.sync_order (seq, log_id)
    SELECT %(last_seq)s::bigint + row_number() OVER (ORDER BY t.ord, l.id), l.id
      FROM unnest(%(txids)s::xid8[]) WITH ORDINALITY AS t(txid, ord)
      JOIN pgtide.sync_log l ON l.txid = t.txid
    RETURNING seq, log_id
), seal AS (
    INSERT INTO pgtide.sync_seal
    SELECT s.*
      FROM (SELECT array_agg(seq ORDER BY seq) AS seqs, array_agg(log_id ORDER BY seq) AS ids
              FROM ins HAVING count(*) > 0) AS b
     CROSS JOIN pgtide.seal_row_v1(b.seqs, b.ids) AS s
), upd AS (
    UPDATE pgtide.sync_sequencer
       SET last_seq = %(last_seq)s::bigint + (SELECT count(*) FROM ins),
           next_xid = %(next_xid)s::xid8,
           open_xids = %(open_xids)s::xid8[],
           updated_at = now()
     WHERE last_seq = %(last_seq)s::bigint
    RETURNING last_seq
), woke AS (
    SELECT pg_notify('pgtide_sequenced', last_seq::text) AS n FROM upd
)
SELECT ins.seq, l.id, l.txid::text AS txid, l.at, l.schema_name, l.table_name, l.op,
       l.pk::text AS pk_json, l.new_row::text AS row_json, l.old_row::text AS old_json,
       l.changed, l.actor, l.origin, l.mutation_id, l.db_role
  FROM ins
  JOIN pgtide.sync_log l ON l.id = ins.log_id
 CROSS JOIN woke
 ORDER BY ins.seq;

-- name: load_state
-- The sequencer's committed state.
SELECT next_xid::text AS next_xid, open_xids::text[] AS open_xids, last_seq FROM pgtide.sync_sequencer;

-- name: sequencer_session
-- The leader's session: its statements must read the log by its indexes ((txid, id) and
-- id) whatever the statistics say (a never-analyzed or bulk-loaded log, a generic plan),
-- so no plan of it can grow with the log, and none starts parallel workers.
SELECT set_config('max_parallel_workers_per_gather', '0', false),
       set_config('enable_seqscan', 'off', false),
       set_config('enable_hashjoin', 'off', false),
       set_config('enable_mergejoin', 'off', false),
       set_config('jit', 'off', false);

-- name: try_lead
-- Take the sequencer's leader lock (session-level, per database) if it is free.
SELECT pg_try_advisory_lock(%(key)s::bigint);

-- name: listen_doorbell
-- The sequencer's wake-up channel (DOORBELL_CHANNEL in cdc/sequencer.py).
LISTEN pgtide_doorbell;

-- name: listen_sequenced
-- The followers' channel: one NOTIFY per committed batch, payload its last seq.
LISTEN pgtide_sequenced;

-- name: local_xids
-- Which of these cluster-wide xids belong to a session (or prepared transaction) of this
-- database: pg_stat_activity shows 32-bit xids, so compare the low 32 bits.
SELECT x::text
  FROM unnest(%(xids)s::xid8[]) AS x
 WHERE (x::text::numeric %% 4294967296)::bigint IN (
        SELECT backend_xid::text::bigint FROM pg_stat_activity
         WHERE datname = current_database() AND backend_xid IS NOT NULL
        UNION ALL
        SELECT transaction::text::bigint FROM pg_prepared_xacts
         WHERE database = current_database());

-- name: set_doorbell
-- 1: the sequencer sleeps and writers ring; 0: it polls and they do not.
SELECT setval('pgtide.sync_doorbell', %(value)s::bigint, true);

-- name: repeatable_read
-- The first statement of a snapshot's transaction.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;

-- name: snapshot_view
-- The transaction's snapshot (its first query fixes it) and the largest seq it shows.
SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text,
       ARRAY(SELECT x::text FROM pg_snapshot_xip(s) AS x),
       (SELECT last_seq FROM pgtide.sync_sequencer), s::text
  FROM pg_current_snapshot() AS s;

-- name: snapshot_covered
-- Whether every change the snapshot shows has been sequenced, and the last seq then.
-- The state is a consistent cut: below next_xid and outside open_xids, all is sequenced.
WITH st AS (SELECT next_xid, open_xids, last_seq FROM pgtide.sync_sequencer)
SELECT st.last_seq,
       NOT EXISTS (
           SELECT 1 FROM pgtide.sync_log l
            WHERE (l.txid >= st.next_xid OR l.txid = ANY (st.open_xids))
              AND pg_visible_in_snapshot(l.txid, %(snapshot)s::pg_snapshot)
              AND NOT EXISTS (SELECT 1 FROM pgtide.sync_order o WHERE o.log_id = l.id))
  FROM st;

-- name: read_after
-- The next changes after a cursor, in seq order.
SELECT o.seq, l.id, l.txid::text AS txid, l.at, l.schema_name, l.table_name, l.op,
       l.pk::text AS pk_json, l.new_row::text AS row_json, l.old_row::text AS old_json,
       l.changed, l.actor, l.origin, l.mutation_id, l.db_role
  FROM pgtide.sync_order o
  JOIN pgtide.sync_log l ON l.id = o.log_id
 WHERE o.seq > %(after)s::bigint
 ORDER BY o.seq
 LIMIT %(limit)s;

-- name: read_range
-- The changes in (after, until], in seq order, for a server-side cursor that a stream's
-- catch-up fetches a page at a time.
SELECT o.seq, l.id, l.txid::text AS txid, l.at, l.schema_name, l.table_name, l.op,
       l.pk::text AS pk_json, l.new_row::text AS row_json, l.old_row::text AS old_json,
       l.changed, l.actor, l.origin, l.mutation_id, l.db_role
  FROM pgtide.sync_order o
  JOIN pgtide.sync_log l ON l.id = o.log_id
 WHERE o.seq > %(after)s::bigint AND o.seq <= %(until)s::bigint
 ORDER BY o.seq;

-- name: statement_timeout
-- Bound every statement of a pooled session (milliseconds, 0: none).
SELECT set_config('statement_timeout', %(ms)s, false);

-- name: head
-- The largest seq handed out so far (0 before the first).
SELECT last_seq FROM pgtide.sync_sequencer;

-- name: track
-- Attach capture to a table; returns its primary key's columns.
SELECT pgtide.track_v1(%(table)s::regclass);

-- name: untrack
-- Detach capture; returns whether the table was tracked.
SELECT pgtide.untrack_v1(%(table)s::regclass);

-- name: tracked_tables
-- Tracked tables with their number of logged changes (one scan of pgtide.sync_log).
SELECT t.schema_name, t.table_name, t.pk_columns, t.tracked_at, coalesce(c.n, 0) AS changes
  FROM pgtide.sync_tracked t
  LEFT JOIN (SELECT schema_name, table_name, count(*) AS n
               FROM pgtide.sync_log GROUP BY schema_name, table_name) c
    USING (schema_name, table_name)
 ORDER BY t.schema_name, t.table_name;

-- name: tracked_columns
-- Every column of every tracked table, with its type name and category.
SELECT t.schema_name, t.table_name, t.pk_columns, a.attname::text, ty.typname::text,
       ty.typcategory::text
  FROM pgtide.sync_tracked t
  JOIN pg_namespace n ON n.nspname = t.schema_name
  JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type ty ON ty.oid = a.atttypid
 ORDER BY t.schema_name, t.table_name, a.attnum;

-- name: earliest
-- The smallest seq still retained (NULL when the log is empty).
SELECT min(seq) FROM pgtide.sync_order;

-- name: metrics
-- Database figures for /metrics: unsequenced committed changes, the oldest open
-- write transaction's age, the NOTIFY queue's fill, pgtide.sync_log's size.
WITH st AS (SELECT next_xid, open_xids FROM pgtide.sync_sequencer)
SELECT (SELECT count(*) FROM pgtide.sync_log l, st
         WHERE (l.txid >= st.next_xid OR l.txid = ANY (st.open_xids))
           AND NOT EXISTS (SELECT 1 FROM pgtide.sync_order o WHERE o.log_id = l.id)),
       (SELECT extract(epoch FROM max(now() - xact_start)) FROM pg_stat_activity
         WHERE backend_xid IS NOT NULL AND datname = current_database()),
       pg_notification_queue_usage(),
       pg_total_relation_size('pgtide.sync_log');

-- name: token_create
-- A new token's record (its hash only).
INSERT INTO pgtide.sync_tokens (name, token_hash, scopes, branch_id, expires_at)
VALUES (%(name)s, %(hash)s, %(scopes)s, %(branch)s, now() + %(expires)s::interval);

-- name: token_revoke
-- Revoke an active token by name.
UPDATE pgtide.sync_tokens SET revoked_at = now()
 WHERE name = %(name)s AND revoked_at IS NULL
RETURNING id;

-- name: token_list
-- Every token's record, newest first.
SELECT id, name, scopes, branch_id, created_at, expires_at, revoked_at
  FROM pgtide.sync_tokens ORDER BY created_at DESC, id DESC;

-- name: token_lookup
-- The active token with this hash.
SELECT id, name, scopes, branch_id, created_at, expires_at, revoked_at
  FROM pgtide.sync_tokens
 WHERE token_hash = %(hash)s AND revoked_at IS NULL
   AND (expires_at IS NULL OR expires_at > now());

-- name: token_inactive
-- Which of the given tokens are revoked or expired now.
SELECT id FROM pgtide.sync_tokens
 WHERE id = ANY (%(ids)s) AND (revoked_at IS NOT NULL OR expires_at <= now());

-- name: token_bootstrap
-- The bootstrap token: created, or its hash replaced when the secret changed (and revived).
INSERT INTO pgtide.sync_tokens (name, token_hash, scopes)
VALUES (%(name)s, %(hash)s, %(scopes)s)
ON CONFLICT (name) DO UPDATE
   SET token_hash = EXCLUDED.token_hash, scopes = EXCLUDED.scopes, revoked_at = NULL,
       expires_at = NULL
 WHERE pgtide.sync_tokens.token_hash <> EXCLUDED.token_hash
    OR pgtide.sync_tokens.revoked_at IS NOT NULL;

-- name: token_count
-- How many active tokens exist (serve refuses to start without one).
SELECT count(*) FROM pgtide.sync_tokens
 WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now());

-- name: engine_schema_exists
-- Whether schema pgtide exists (migrate creates it; nothing else may).
SELECT 1 FROM pg_namespace WHERE nspname = 'pgtide';

-- name: legacy_layout
-- A database migrated by the release before schema pgtide: the engine's state row and
-- yoyo's bookkeeping in public, nothing yet in pgtide.
SELECT to_regclass('public.sync_sequencer') IS NOT NULL
       AND to_regclass('pgtide.sync_sequencer') IS NULL
       AND to_regclass('public._yoyo_migration') IS NOT NULL;

-- name: legacy_applied
-- The migration ids the old bookkeeping in public records.
SELECT migration_id FROM public._yoyo_migration;

-- name: tracked_names
-- The tracked tables' schema and name.
SELECT schema_name, table_name FROM pgtide.sync_tracked;

-- name: mark_migration
-- Record a migration as applied in pgtide's bookkeeping (yoyo's own table and format).
INSERT INTO pgtide._yoyo_migration (migration_hash, migration_id, applied_at_utc)
VALUES (%(hash)s, %(id)s, now() AT TIME ZONE 'UTC')
ON CONFLICT (migration_hash) DO NOTHING;

-- name: forget_legacy_log
-- The old bookkeeping's log rows of pgtide's migrations.
DELETE FROM public._yoyo_log WHERE migration_id = ANY (%(ids)s::text[]);

-- name: forget_legacy_migrations
-- The old bookkeeping's record of pgtide's migrations.
DELETE FROM public._yoyo_migration WHERE migration_id = ANY (%(ids)s::text[]);

-- name: legacy_bookkeeping_left
-- Migrations of others still recorded in public's yoyo tables (0: drop them).
SELECT (SELECT count(*) FROM public._yoyo_migration) + (SELECT count(*) FROM public._yoyo_log);

-- name: create_apps_table
-- The registry of installed apps, as 0007_apps creates it (adoption needs it first).
CREATE TABLE IF NOT EXISTS pgtide.sync_apps (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    ref          text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);

-- name: record_app
-- Record an app as installed (its ref kept current); a row comes back when it is new.
INSERT INTO pgtide.sync_apps AS a (name, ref) VALUES (%(name)s, %(ref)s)
ON CONFLICT (name) DO UPDATE SET ref = EXCLUDED.ref
RETURNING (xmax = 0) AS inserted;

-- name: installed_apps
-- The installed apps, in the order they were installed.
SELECT name, ref FROM pgtide.sync_apps ORDER BY installed_at, name;

-- name: engine_grantees
-- Roles granted anything on the engine's tables (NULL: PUBLIC), but their owners: after
-- the tables moved into schema pgtide they need USAGE on it to keep that access.
SELECT DISTINCT r.rolname
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL aclexplode(c.relacl) AS a
  LEFT JOIN pg_roles r ON r.oid = a.grantee
 WHERE n.nspname = 'pgtide' AND a.grantee <> c.relowner;
