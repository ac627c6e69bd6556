-- pgtide engine tables: the change log, the sequence of committed changes,
-- the sequencer's state, the doorbell flag and the registry of tracked tables.
-- Functions and triggers live in schema/triggers.sql (applied by 0002).

CREATE SCHEMA IF NOT EXISTS pgtide;

-- One row per captured change. The identity must keep CACHE 1: with a
-- per-session cache, ids stop following time across sessions and the
-- per-row ordering argument in DESIGN.md fails.
CREATE TABLE sync_log (
    id          bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    op          text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'MESSAGE')),
    pk          jsonb,
    new_row     jsonb,
    old_row     jsonb,
    changed     text[],
    actor       text,
    origin      text,
    mutation_id text,
    db_role     text NOT NULL DEFAULT current_user
);
CREATE INDEX sync_log_txid_idx ON sync_log (txid, id);

-- The one true order: seq is dense (1..N), each log row sequenced once.
CREATE TABLE sync_order (
    seq    bigint PRIMARY KEY,
    log_id bigint NOT NULL UNIQUE REFERENCES sync_log (id)
);

-- The sequencer's state, committed together with the sync_order rows it covers.
CREATE TABLE sync_sequencer (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next_xid   xid8 NOT NULL,
    open_xids  xid8[] NOT NULL DEFAULT '{}',
    last_seq   bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Start at the current snapshot's xmin: every transaction that could still
-- write is at or above it.
INSERT INTO sync_sequencer (next_xid) VALUES (pg_snapshot_xmin(pg_current_snapshot()));

-- The doorbell flag: 1 = the sequencer sleeps (writers NOTIFY), 0 = it polls.
-- A sequence because setval takes effect at once and reads ignore MVCC snapshots.
CREATE SEQUENCE sync_doorbell MINVALUE 0 MAXVALUE 1 START 1 NO CYCLE;

-- Registry of tracked tables.
CREATE TABLE sync_tracked (
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    pk_columns  text[] NOT NULL,
    tracked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name)
);
