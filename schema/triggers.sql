-- pgtide capture: functions and guards. Idempotent (CREATE OR REPLACE and
-- DROP ... IF EXISTS), re-applied by every `pgtide migrate`.
-- Function names carry a version suffix so that a rolling deploy never calls
-- a changed signature; pgtide.publish is public API and keeps its name.

CREATE SCHEMA IF NOT EXISTS pgtide;

-- Row-level capture, AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW.
-- TG_ARGV, fixed by pgtide.track_v1: the tracked table's schema and name (for a
-- partitioned table, the parent's, not the partition's), then its key's columns.
CREATE OR REPLACE FUNCTION pgtide.capture_v1() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    new_j jsonb;
    old_j jsonb;
    img   jsonb;
    chg   text[];
    key   jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        new_j := to_jsonb(NEW);
        img := new_j;
    ELSIF TG_OP = 'UPDATE' THEN
        new_j := to_jsonb(NEW);
        old_j := to_jsonb(OLD);
        -- Code-point order, the same whatever the database's collation.
        SELECT array_agg(n.key ORDER BY n.key COLLATE "C") INTO chg
          FROM jsonb_each(new_j) AS n
         WHERE n.value IS DISTINCT FROM old_j -> n.key;
        IF chg IS NULL THEN
            RETURN NULL;  -- an UPDATE that changes no column is not a change
        END IF;
        img := new_j;
    ELSE
        old_j := to_jsonb(OLD);
        img := old_j;
    END IF;
    SELECT jsonb_object_agg(k, img -> k) INTO key FROM unnest(TG_ARGV[2:]) AS k;
    INSERT INTO pgtide.sync_log
        (schema_name, table_name, op, pk, new_row, old_row, changed, actor, origin, mutation_id)
    VALUES
        (TG_ARGV[0], TG_ARGV[1], TG_OP, key, new_j, old_j, chg,
         nullif(current_setting('pgtide.actor', true), ''),
         nullif(current_setting('pgtide.origin', true), ''),
         nullif(current_setting('pgtide.mutation_id', true), ''));
    -- The doorbell: NOTIFY serialises commits, so ring only while the
    -- sequencer sleeps. A sequence read sees setval at once, whatever our snapshot.
    IF (SELECT last_value FROM pgtide.sync_doorbell) = 1 THEN
        PERFORM pg_notify('pgtide_doorbell', '');
    END IF;
    RETURN NULL;
END
$fn$;

-- Row-level capture, v2: what capture_v1 does, for less per row (docs/benchmarks.md):
-- a one-column key is built directly rather than aggregated, and the doorbell flag is
-- read with pg_sequence_last_value, a plain function call (the same non-MVCC read of
-- the sequence, without a query per row). Same rows in sync_log, byte for byte.
-- capture_v1 stays for triggers attached before this file changed, until re-attached.
CREATE OR REPLACE FUNCTION pgtide.capture_v2() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    new_j jsonb;
    old_j jsonb;
    img   jsonb;
    chg   text[];
    key   jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        new_j := to_jsonb(NEW);
        img := new_j;
    ELSIF TG_OP = 'UPDATE' THEN
        new_j := to_jsonb(NEW);
        old_j := to_jsonb(OLD);
        -- Code-point order, the same whatever the database's collation.
        SELECT array_agg(n.key ORDER BY n.key COLLATE "C") INTO chg
          FROM jsonb_each(new_j) AS n
         WHERE n.value IS DISTINCT FROM old_j -> n.key;
        IF chg IS NULL THEN
            RETURN NULL;  -- an UPDATE that changes no column is not a change
        END IF;
        img := new_j;
    ELSE
        old_j := to_jsonb(OLD);
        img := old_j;
    END IF;
    IF TG_NARGS = 3 THEN
        key := jsonb_build_object(TG_ARGV[2], img -> TG_ARGV[2]);
    ELSE
        SELECT jsonb_object_agg(k, img -> k) INTO key FROM unnest(TG_ARGV[2:]) AS k;
    END IF;
    INSERT INTO pgtide.sync_log
        (schema_name, table_name, op, pk, new_row, old_row, changed, actor, origin, mutation_id)
    VALUES
        (TG_ARGV[0], TG_ARGV[1], TG_OP, key, new_j, old_j, chg,
         nullif(current_setting('pgtide.actor', true), ''),
         nullif(current_setting('pgtide.origin', true), ''),
         nullif(current_setting('pgtide.mutation_id', true), ''));
    -- The doorbell: NOTIFY serialises commits, so ring only while the sequencer sleeps.
    IF pg_sequence_last_value('pgtide.sync_doorbell'::regclass) = 1 THEN
        PERFORM pg_notify('pgtide_doorbell', '');
    END IF;
    RETURN NULL;
END
$fn$;

-- Statement-level capture of TRUNCATE; TG_ARGV as for capture_v1.
CREATE OR REPLACE FUNCTION pgtide.capture_truncate_v1() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO pgtide.sync_log (schema_name, table_name, op, actor, origin, mutation_id)
    VALUES (TG_ARGV[0], TG_ARGV[1], 'TRUNCATE',
            nullif(current_setting('pgtide.actor', true), ''),
            nullif(current_setting('pgtide.origin', true), ''),
            nullif(current_setting('pgtide.mutation_id', true), ''));
    IF (SELECT last_value FROM pgtide.sync_doorbell) = 1 THEN
        PERFORM pg_notify('pgtide_doorbell', '');
    END IF;
    RETURN NULL;
END
$fn$;

-- Application messages: logged, ordered and resumable like row changes, and
-- only visible if the calling transaction commits.
CREATE OR REPLACE FUNCTION pgtide.publish(topic text, payload jsonb) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    log_id bigint;
BEGIN
    IF topic IS NULL OR topic = '' THEN
        RAISE EXCEPTION 'pgtide.publish: topic must be a non-empty string'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO pgtide.sync_log (schema_name, table_name, op, new_row, actor, origin, mutation_id)
    VALUES ('pgtide', topic, 'MESSAGE', payload,
            nullif(current_setting('pgtide.actor', true), ''),
            nullif(current_setting('pgtide.origin', true), ''),
            nullif(current_setting('pgtide.mutation_id', true), ''))
    RETURNING id INTO log_id;
    IF (SELECT last_value FROM pgtide.sync_doorbell) = 1 THEN
        PERFORM pg_notify('pgtide_doorbell', '');
    END IF;
    RETURN log_id;
END
$fn$;

-- Append-only guard for pgtide.sync_log and pgtide.sync_order. Only the retention job,
-- which sets pgtide.retention = 'on' in its transaction, may DELETE.
CREATE OR REPLACE FUNCTION pgtide.append_only_v1() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('pgtide.retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'pgtide records every change once; old entries are removed only by retention.';
END
$fn$;

DROP TRIGGER IF EXISTS sync_log_append_only ON pgtide.sync_log;
CREATE TRIGGER sync_log_append_only BEFORE UPDATE OR DELETE ON pgtide.sync_log
    FOR EACH ROW EXECUTE FUNCTION pgtide.append_only_v1();
DROP TRIGGER IF EXISTS sync_log_no_truncate ON pgtide.sync_log;
CREATE TRIGGER sync_log_no_truncate BEFORE TRUNCATE ON pgtide.sync_log
    FOR EACH STATEMENT EXECUTE FUNCTION pgtide.append_only_v1();
DROP TRIGGER IF EXISTS sync_order_append_only ON pgtide.sync_order;
CREATE TRIGGER sync_order_append_only BEFORE UPDATE OR DELETE ON pgtide.sync_order
    FOR EACH ROW EXECUTE FUNCTION pgtide.append_only_v1();
DROP TRIGGER IF EXISTS sync_order_no_truncate ON pgtide.sync_order;
CREATE TRIGGER sync_order_no_truncate BEFORE TRUNCATE ON pgtide.sync_order
    FOR EACH STATEMENT EXECUTE FUNCTION pgtide.append_only_v1();

-- For apps' tables (BEFORE UPDATE): `version` rises by one and `updated_at` moves on
-- every real update.
CREATE OR REPLACE FUNCTION pgtide.touch_v1() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW IS DISTINCT FROM OLD THEN
        NEW.version := OLD.version + 1;
        NEW.updated_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$fn$;

-- Attach capture to a table with a primary key; idempotent. Returns the key's columns.
CREATE OR REPLACE FUNCTION pgtide.track_v1(rel regclass) RETURNS text[]
LANGUAGE plpgsql SET client_min_messages = warning AS $fn$
DECLARE
    sch  text;
    tbl  text;
    kind "char";
    cols text[];
    args text;
BEGIN
    SELECT n.nspname, c.relname, c.relkind INTO sch, tbl, kind
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = rel;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'cannot track %: it is not a table', rel
            USING ERRCODE = 'wrong_object_type';
    END IF;
    -- Every engine table lives in schema pgtide (a table of one's own named sync_log in
    -- another schema is trackable). Tracking sync_tokens would stream token hashes.
    IF sch = 'pgtide' THEN
        RAISE EXCEPTION 'cannot track %: it belongs to pgtide itself', rel
            USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO cols
      FROM pg_index i
     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = rel AND i.indisprimary;
    IF cols IS NULL THEN
        RAISE EXCEPTION 'cannot track %: it has no primary key', rel
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'pgtide identifies rows by their primary key; add one, then track the table.';
    END IF;
    args := (SELECT string_agg(quote_literal(a), ', ') FROM unnest(ARRAY[sch, tbl] || cols) AS a);
    EXECUTE format('DROP TRIGGER IF EXISTS pgtide_capture ON %s', rel);
    EXECUTE format(
        'CREATE TRIGGER pgtide_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION pgtide.capture_v2(%s)', rel, args);
    EXECUTE format('DROP TRIGGER IF EXISTS pgtide_capture_truncate ON %s', rel);
    EXECUTE format(
        'CREATE TRIGGER pgtide_capture_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION pgtide.capture_truncate_v1(%s)', rel, args);
    INSERT INTO pgtide.sync_tracked (schema_name, table_name, pk_columns)
    VALUES (sch, tbl, cols)
    ON CONFLICT (schema_name, table_name) DO UPDATE SET pk_columns = EXCLUDED.pk_columns;
    RETURN cols;
END
$fn$;

-- Detach capture; returns whether the table was tracked.
CREATE OR REPLACE FUNCTION pgtide.untrack_v1(rel regclass) RETURNS boolean
LANGUAGE plpgsql SET client_min_messages = warning AS $fn$
DECLARE
    n integer;
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS pgtide_capture ON %s', rel);
    EXECUTE format('DROP TRIGGER IF EXISTS pgtide_capture_truncate ON %s', rel);
    DELETE FROM pgtide.sync_tracked t
     USING pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = rel AND t.schema_name = n.nspname AND t.table_name = c.relname;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n > 0;
END
$fn$;

-- Re-attach capture to every tracked table, so trigger arguments always follow
-- the functions above (this file is re-applied whenever it changes). A tracked
-- table that no longer exists is skipped.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT schema_name, table_name FROM pgtide.sync_tracked LOOP
        IF to_regclass(format('%I.%I', r.schema_name, r.table_name)) IS NOT NULL THEN
            PERFORM pgtide.track_v1(format('%I.%I', r.schema_name, r.table_name)::regclass);
        END IF;
    END LOOP;
END
$$;
