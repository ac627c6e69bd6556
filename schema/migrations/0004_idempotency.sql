-- depends: 0002_capture
-- Bookkeeping of the write API (api/): remembered responses of writes sent with an
-- Idempotency-Key, the mutation ids of offline pushes already applied, and the
-- client clocks that last-write-wins compares. None of these tables is tracked.

-- One row per (scope, key): written in the same transaction as the write it
-- remembers, so a key is remembered exactly when its write committed.
CREATE TABLE sync_idempotency (
    scope       text NOT NULL,             -- the actor ('' when none): keys are per client
    key         text NOT NULL,
    fingerprint text NOT NULL,             -- sha256 of method, path and body
    status      integer,
    headers     jsonb,
    body        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX sync_idempotency_expires_idx ON sync_idempotency (expires_at);

-- A pushed mutation id, inserted by the transaction that applies the mutation:
-- a second push of the same id waits on that insert, then finds it and reports a
-- duplicate. Rejected and conflicting mutations leave no row.
CREATE TABLE sync_mutations (
    mutation_id text PRIMARY KEY,
    client_id   text,
    resource    text NOT NULL,
    op          text NOT NULL,
    row_id      uuid,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- The client timestamp of the last pushed write of a row, and the row's version
-- right after it (NULL: that write deleted the row, a tombstone). When the row's
-- version has moved on since, another writer came later and the row's
-- updated_at stands for its time.
CREATE TABLE sync_clocks (
    table_name text NOT NULL,
    row_id     uuid NOT NULL,
    client_ts  timestamptz NOT NULL,
    version    integer,
    PRIMARY KEY (table_name, row_id)
);
