-- The write API's runtime SQL. Each block: `-- name: <name>`, a description line, the SQL.
-- `{table}`, `{columns}`, ... are filled with psycopg.sql identifiers and fragments
-- composed from the resource models, never with input; every value is a bound parameter.

-- name: begin_write
-- The first statement of every write: who wrote it, for the capture trigger, and the
-- transaction id its changes carry in sync_log and on the stream.
SELECT set_config('pgtide.actor', %(actor)s, true),
       set_config('pgtide.origin', %(origin)s, true),
       set_config('pgtide.mutation_id', %(mutation_id)s, true),
       pg_current_xact_id()::text;

-- name: select_row
-- One row as its JSON image (the same image the stream sends). {pin} is empty, or
-- `AND t.branch_id = %(branch)s` for a branch-pinned token, in every block below.
SELECT to_jsonb(t) FROM {table} AS t WHERE t.id = %(id)s {pin};

-- name: lock_row
-- One row, locked until the transaction ends, with what last-write-wins compares.
SELECT to_jsonb(t), t.version, t.updated_at FROM {table} AS t
 WHERE t.id = %(id)s {pin} FOR UPDATE;

-- name: insert_row
-- A new row; columns the body left out take the table's defaults.
INSERT INTO {table} AS t ({columns}) VALUES ({values}) RETURNING to_jsonb(t);

-- name: update_row
-- Set columns of one row when its version is one of %(versions)s (NULL: any version).
UPDATE {table} AS t SET {assignments}
 WHERE t.id = %(id)s {pin}
   AND (%(versions)s::int[] IS NULL OR t.version = ANY (%(versions)s::int[]))
RETURNING to_jsonb(t);

-- name: delete_row
-- Delete one row when its version is one of %(versions)s (NULL: any version).
DELETE FROM {table} AS t
 WHERE t.id = %(id)s {pin}
   AND (%(versions)s::int[] IS NULL OR t.version = ANY (%(versions)s::int[]))
RETURNING to_jsonb(t);

-- name: list_rows
-- A page of rows in a total order; the key columns after the image make the next cursor.
SELECT to_jsonb(t), {keys} FROM {table} AS t WHERE {where} ORDER BY {order} LIMIT %(limit)s;

-- name: constraint_columns
-- The columns a constraint of a table covers, to name them in a 422.
SELECT array_agg(a.attname::text ORDER BY a.attnum)
  FROM pg_constraint c
  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
 WHERE c.conname = %(constraint)s
   AND c.conrelid = to_regclass(quote_ident(%(schema)s) || '.' || quote_ident(%(table)s));

-- name: reserve_key
-- Claim an Idempotency-Key for this transaction (or take over an expired one). A
-- concurrent request with the same key waits here until this transaction ends.
INSERT INTO sync_idempotency (scope, key, fingerprint, expires_at)
VALUES (%(scope)s, %(key)s, %(fingerprint)s, now() + make_interval(secs => %(ttl_s)s))
ON CONFLICT (scope, key) DO UPDATE
   SET fingerprint = EXCLUDED.fingerprint, expires_at = EXCLUDED.expires_at,
       status = NULL, headers = NULL, body = NULL, created_at = now()
 WHERE sync_idempotency.expires_at <= now()
RETURNING true;

-- name: stored_response
-- The remembered response of a key another transaction committed.
SELECT fingerprint, status, headers, body FROM sync_idempotency
 WHERE scope = %(scope)s AND key = %(key)s;

-- name: remember_response
-- Store the response of the write in the transaction that made it.
UPDATE sync_idempotency SET status = %(status)s, headers = %(headers)s, body = %(body)s
 WHERE scope = %(scope)s AND key = %(key)s;

-- name: purge_keys
-- Forget a few expired keys; rows another writer holds are skipped, not waited for.
DELETE FROM sync_idempotency
 WHERE (scope, key) IN (SELECT scope, key FROM sync_idempotency
                         WHERE expires_at <= now()
                         ORDER BY expires_at LIMIT 100
                           FOR UPDATE SKIP LOCKED);

-- name: claim_mutation
-- Record a pushed mutation id as applied by this transaction. Nothing comes back when it
-- was applied before; a concurrent push of the same id waits here until this one ends.
INSERT INTO sync_mutations (mutation_id, client_id, resource, op, row_id)
VALUES (%(mutation_id)s, %(client_id)s, %(resource)s, %(op)s, %(row_id)s)
ON CONFLICT (mutation_id) DO NOTHING
RETURNING true;

-- name: applied_mutation
-- The transaction that applied a mutation id.
SELECT txid::text FROM sync_mutations WHERE mutation_id = %(mutation_id)s;

-- name: lock_clock
-- A row's last pushed client timestamp and the version it left, locked with the row.
SELECT client_ts, version FROM sync_clocks
 WHERE table_name = %(table)s AND row_id = %(id)s FOR UPDATE;

-- name: set_clock
-- Record a pushed write's client timestamp and the version it left (NULL: deleted).
INSERT INTO sync_clocks (table_name, row_id, client_ts, version)
VALUES (%(table)s, %(id)s, %(client_ts)s, %(version)s)
ON CONFLICT (table_name, row_id) DO UPDATE
   SET client_ts = EXCLUDED.client_ts, version = EXCLUDED.version;
