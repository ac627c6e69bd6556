-- depends: 0003_domain
-- Audit: indexes for the sync-log filters, the tamper-evident seal chain, and
-- the retention record. Decisions and measurements: docs/audit.md.
--
-- Roles are not created here (roles are cluster-wide and creating them needs
-- CREATEROLE): schema/roles.sql holds the grants docs/audit.md documents.

-- The digest of one sequenced change: sha256 of its canonical text, v1.
-- Canonical text: a jsonb object of every sync_log column of v1 plus the seq,
-- with txid as a decimal string and `at` as UTC ISO 8601 without offset, cast
-- to text (jsonb sorts keys and prints one spelling whatever the session's
-- TimeZone, DateStyle or extra_float_digits), encoded as UTF-8.
-- It lives in a migration, not in triggers.sql: seals already written depend on
-- it byte for byte, so it never changes; a new definition would be _v2.
CREATE FUNCTION pgtide.log_digest_v1(seq bigint, l sync_log) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
    SELECT sha256(convert_to(jsonb_build_object(
        'seq', seq,
        'id', l.id,
        'txid', l.txid::text,
        'at', l.at AT TIME ZONE 'UTC',
        'schema_name', l.schema_name,
        'table_name', l.table_name,
        'op', l.op,
        'pk', l.pk,
        'new_row', l.new_row,
        'old_row', l.old_row,
        'changed', l.changed,
        'actor', l.actor,
        'origin', l.origin,
        'mutation_id', l.mutation_id,
        'db_role', l.db_role)::text, 'UTF8'))
$fn$;

-- The seal chain. The sequencer writes one seal per committed batch, in the same
-- statement as the batch's sync_order rows (cdc/queries.sql, sequence_batch, with
-- pgtide.seal_row_v1 below):
--   hash(k) = sha256(hash(k-1) || digest(first_seq) || ... || digest(last_seq))
-- Seal 0 is the genesis: no rows, prev_hash empty, hash sha256(empty).
-- `digests` keeps the first 8 bytes of each row's digest, in seq order, so that
-- `pgtide audit verify` can name the row that changed, not only the seal.
-- min_at / max_at bound the rows' `at`; sealed_at is never below max_at nor
-- below the previous seal's, so it only grows with seal_no: time filters and
-- retention turn times into seq ranges with it.
-- Retention keeps the seals of the ranges it removes: the chain stays checkable.
CREATE TABLE sync_seal (
    seal_no   bigint PRIMARY KEY CHECK (seal_no >= 0),
    first_seq bigint NOT NULL,
    last_seq  bigint NOT NULL,
    hash      bytea NOT NULL CHECK (length(hash) = 32),
    prev_hash bytea NOT NULL,
    digests   bytea NOT NULL,
    min_at    timestamptz NOT NULL,
    max_at    timestamptz NOT NULL,
    sealed_at timestamptz NOT NULL,
    CHECK (last_seq >= first_seq - 1),
    CHECK (length(digests) = 8 * (last_seq - first_seq + 1)),
    CHECK (min_at <= max_at AND max_at <= sealed_at)
);
CREATE UNIQUE INDEX sync_seal_last_seq_idx ON sync_seal (last_seq);
-- `from`: the first seal sealed at or after a time.
CREATE INDEX sync_seal_sealed_at_idx ON sync_seal (sealed_at);
-- `to`: the seals holding a row older than a time but sealed after it (long
-- transactions), found by a stabbing query.
CREATE INDEX sync_seal_span_idx ON sync_seal USING gist (tstzrange(min_at, sealed_at, '[]'));

-- The seal of one batch, computed for the sequencer's statement (sequence_batch in
-- cdc/queries.sql inserts what this returns): the rows sequenced after the last seal
-- (the batch, given as its seqs and log ids in seq order, and any rows an older
-- sequencer left unsealed below it) chained to the last seal. A function so that its
-- plans are cached per session: the sequencer's statement stays small to plan, which
-- is most of what sealing costs a one-change batch (docs/audit.md). Rows of the
-- calling statement may or may not be visible here; the seq bound makes that moot.
CREATE FUNCTION pgtide.seal_row_v1(seqs bigint[], log_ids bigint[]) RETURNS SETOF sync_seal
LANGUAGE plpgsql AS $fn$
DECLARE
    prev sync_seal;
    next sync_seal;
BEGIN
    IF coalesce(cardinality(seqs), 0) = 0
       OR cardinality(seqs) IS DISTINCT FROM cardinality(log_ids) THEN
        RETURN;  -- nothing sequenced: no seal
    END IF;
    SELECT * INTO prev FROM sync_seal ORDER BY seal_no DESC LIMIT 1;
    SELECT prev.seal_no + 1, min(u.seq), max(u.seq),
           sha256(prev.hash || string_agg(u.d, ''::bytea ORDER BY u.seq)), prev.hash,
           string_agg(substr(u.d, 1, 8), ''::bytea ORDER BY u.seq),
           min(u.at), max(u.at), greatest(now(), max(u.at), prev.sealed_at)
      INTO next
      FROM (SELECT o.seq, pgtide.log_digest_v1(o.seq, l) AS d, l.at
              FROM sync_order o JOIN sync_log l ON l.id = o.log_id
             WHERE o.seq > prev.last_seq AND o.seq < seqs[1]
            UNION ALL
            SELECT b.seq, pgtide.log_digest_v1(b.seq, l), l.at
              FROM unnest(seqs, log_ids) AS b(seq, log_id)
              JOIN sync_log l ON l.id = b.log_id) AS u;
    RETURN NEXT next;
END
$fn$;

CREATE TRIGGER sync_seal_append_only BEFORE UPDATE OR DELETE ON sync_seal
    FOR EACH ROW EXECUTE FUNCTION pgtide.append_only_v1();
CREATE TRIGGER sync_seal_no_truncate BEFORE TRUNCATE ON sync_seal
    FOR EACH STATEMENT EXECUTE FUNCTION pgtide.append_only_v1();

-- Retention's record: one row per run, moved forward by each of its batches in
-- the batch's own transaction, so removed_through is always exact.
CREATE TABLE sync_retention (
    run_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    keep_interval   interval NOT NULL,
    cutoff          timestamptz NOT NULL,
    removed_through bigint NOT NULL,
    removed_rows    bigint NOT NULL DEFAULT 0,
    db_role         text NOT NULL DEFAULT current_user
);

-- Seal what was sequenced before this migration: the genesis seal, then one seal per
-- 10,000 existing rows, chained. Runs before any sequencer that seals; an older
-- sequencer still running meanwhile leaves rows that the first new seal covers.
-- It reads the log and writes only sync_seal: writers do not wait for it.
DO $$
DECLARE
    head  bigint := (SELECT last_seq FROM sync_sequencer);
    lo    bigint := 0;
    n     bigint := 0;
    prev  bytea := sha256(''::bytea);
    stamp timestamptz := now();
BEGIN
    INSERT INTO sync_seal (seal_no, first_seq, last_seq, hash, prev_hash, digests,
                           min_at, max_at, sealed_at)
    VALUES (0, 1, 0, prev, ''::bytea, ''::bytea, stamp, stamp, stamp);
    WHILE lo < head LOOP
        n := n + 1;
        INSERT INTO sync_seal (seal_no, first_seq, last_seq, hash, prev_hash, digests,
                               min_at, max_at, sealed_at)
        SELECT n, min(s.seq), max(s.seq),
               sha256(prev || string_agg(s.d, ''::bytea ORDER BY s.seq)), prev,
               string_agg(substr(s.d, 1, 8), ''::bytea ORDER BY s.seq),
               min(s.at), max(s.at), greatest(stamp, max(s.at))
          FROM (SELECT o.seq, pgtide.log_digest_v1(o.seq, l) AS d, l.at
                  FROM sync_order o JOIN sync_log l ON l.id = o.log_id
                 WHERE o.seq > lo AND o.seq <= least(lo + 10000, head)) AS s
        RETURNING hash, sealed_at INTO prev, stamp;
        lo := lo + 10000;
    END LOOP;
END
$$;

-- Indexes on sync_log, last: building one holds a SHARE lock on sync_log (writers
-- wait) until this migration commits, so nothing slow comes after them. Each is
-- created only if missing, checked without a lock: on a large existing log, build
-- them first with CREATE INDEX CONCURRENTLY under the same names (docs/audit.md) and
-- this migration never blocks writers.
-- Each index costs every tracked write (measured in docs/audit.md), so there are few,
-- partial where whole classes of rows can never match: changes made outside the API
-- carry no actor or origin; only TRUNCATE rows enter the last one.
DO $$
BEGIN
    -- A row's history (table + key), the `pk` filter, and `table` alone when a table
    -- is rare. Not partial: a `table` filter alone could not use it.
    IF to_regclass('public.sync_log_table_pk_idx') IS NULL THEN
        CREATE INDEX sync_log_table_pk_idx ON sync_log (table_name, pk);
    END IF;
    -- "What did alice do (lately)?": the actor, then the time.
    IF to_regclass('public.sync_log_actor_at_idx') IS NULL THEN
        CREATE INDEX sync_log_actor_at_idx ON sync_log (actor, at) WHERE actor IS NOT NULL;
    END IF;
    -- The same per origin (a branch, a service).
    IF to_regclass('public.sync_log_origin_at_idx') IS NULL THEN
        CREATE INDEX sync_log_origin_at_idx ON sync_log (origin, at) WHERE origin IS NOT NULL;
    END IF;
    -- TRUNCATEs are rare and remove every row of a table: a row's history looks them up.
    IF to_regclass('public.sync_log_truncate_idx') IS NULL THEN
        CREATE INDEX sync_log_truncate_idx ON sync_log (table_name) WHERE op = 'TRUNCATE';
    END IF;
END
$$;
