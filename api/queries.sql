-- The write API's runtime SQL. Each block: `-- name: <name>`, a description line, the SQL.
-- `{table}`, `{columns}`, ... are filled with psycopg.sql identifiers and fragments
-- composed from the resource models, never with input; every value is a bound parameter.

-- name: begin_write
-- The first statement of every write: who wrote it, for the capture trigger, and the
-- transaction id its changes carry in pgtide.sync_log and on the stream.
SELECT set_config('pgtide.actor', %(actor)s, true),
       set_config('pgtide.origin', %(origin)s, true),
       set_config('pgtide.mutation_id', %(mutation_id)s, true),
       pg_current_xact_id()::text;

-- name: select_row
-- One row as its JSON image (the same image the stream sends) and its ETag. {pin} is
-- empty, or `AND t.<tenant> = %(branch)s` for a branch-pinned token, in every block
-- below; {key} is the resource's key column, {etag} its ETag expression (models.py).
SELECT to_jsonb(t), {etag} FROM {table} AS t WHERE t.{key} = %(id)s {pin};

-- name: lock_row
-- One row, locked until the transaction ends, with what last-write-wins compares: its
-- ETag and when it was last written ({written}: its updated_at, or the log's last `at`).
SELECT to_jsonb(t), {etag}, {written} FROM {table} AS t
 WHERE t.{key} = %(id)s {pin} FOR UPDATE;

-- name: last_logged_at
-- When a row last changed, by the log (tables without an updated_at column).
(SELECT max(l.at) FROM pgtide.sync_log l
  WHERE l.table_name = %(table_name)s AND l.pk = jsonb_build_object(%(key_name)s::text, t.{key})
    AND l.schema_name = %(schema_name)s)

-- name: insert_row
-- A new row; columns the body left out take the table's defaults.
INSERT INTO {table} AS t ({columns}) VALUES ({values}) RETURNING to_jsonb(t), {etag};

-- name: update_row
-- Set columns of one row when its ETag is one of %(tags)s (NULL: any).
UPDATE {table} AS t SET {assignments}
 WHERE t.{key} = %(id)s {pin}
   AND (%(tags)s::text[] IS NULL OR {etag} = ANY (%(tags)s::text[]))
RETURNING to_jsonb(t), {etag};

-- name: delete_row
-- Delete one row when its ETag is one of %(tags)s (NULL: any).
DELETE FROM {table} AS t
 WHERE t.{key} = %(id)s {pin}
   AND (%(tags)s::text[] IS NULL OR {etag} = ANY (%(tags)s::text[]))
RETURNING to_jsonb(t), {etag};

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
INSERT INTO pgtide.sync_idempotency (scope, key, fingerprint, expires_at)
VALUES (%(scope)s, %(key)s, %(fingerprint)s, now() + make_interval(secs => %(ttl_s)s))
ON CONFLICT (scope, key) DO UPDATE
   SET fingerprint = EXCLUDED.fingerprint, expires_at = EXCLUDED.expires_at,
       status = NULL, headers = NULL, body = NULL, created_at = now()
 WHERE sync_idempotency.expires_at <= now()
RETURNING true;

-- name: stored_response
-- The remembered response of a key another transaction committed.
SELECT fingerprint, status, headers, body FROM pgtide.sync_idempotency
 WHERE scope = %(scope)s AND key = %(key)s;

-- name: remember_response
-- Store the response of the write in the transaction that made it.
UPDATE pgtide.sync_idempotency SET status = %(status)s, headers = %(headers)s, body = %(body)s
 WHERE scope = %(scope)s AND key = %(key)s;

-- name: purge_keys
-- Forget a few expired keys; rows another writer holds are skipped, not waited for.
DELETE FROM pgtide.sync_idempotency
 WHERE (scope, key) IN (SELECT scope, key FROM pgtide.sync_idempotency
                         WHERE expires_at <= now()
                         ORDER BY expires_at LIMIT 100
                           FOR UPDATE SKIP LOCKED);

-- name: claim_mutation
-- Record a pushed mutation id as applied by this transaction, in its sender's namespace.
-- Nothing comes back when the sender applied it before; a concurrent push of the same
-- id by the same sender waits here until this one ends.
INSERT INTO pgtide.sync_mutations (sender, mutation_id, client_id, resource, op, row_id)
VALUES (%(sender)s, %(mutation_id)s, %(client_id)s, %(resource)s, %(op)s, %(row_id)s)
ON CONFLICT (sender, mutation_id) DO NOTHING
RETURNING true;

-- name: applied_mutation
-- The transaction that applied a mutation id of this sender.
SELECT txid::text FROM pgtide.sync_mutations
 WHERE sender = %(sender)s AND mutation_id = %(mutation_id)s;

-- name: lock_clock
-- A row's last pushed client timestamp, the ETag it left and the row's tenant (branch),
-- locked with the row.
SELECT client_ts, etag, tenant FROM pgtide.sync_clocks
 WHERE table_name = %(table)s AND row_id = %(id)s FOR UPDATE;

-- name: set_clock
-- Record a pushed write's client timestamp, the ETag it left (NULL: deleted) and the
-- row's tenant, so a branch-pinned push never compares with another branch's clock.
INSERT INTO pgtide.sync_clocks (table_name, row_id, client_ts, etag, tenant)
VALUES (%(table)s, %(id)s, %(client_ts)s, %(etag)s, %(tenant)s)
ON CONFLICT (table_name, row_id) DO UPDATE
   SET client_ts = EXCLUDED.client_ts, etag = EXCLUDED.etag, tenant = EXCLUDED.tenant;

-- name: foreign_keys
-- The foreign keys of a table: name, its columns, the referenced table and columns (in
-- the key's order), and the referenced table's column names (has it a tenant column?).
SELECT c.conname::text, array_agg(a.attname::text ORDER BY k.ord),
       rn.nspname::text, rc.relname::text, array_agg(ra.attname::text ORDER BY k.ord),
       (SELECT array_agg(x.attname::text) FROM pg_attribute x
         WHERE x.attrelid = c.confrelid AND x.attnum > 0 AND NOT x.attisdropped)
  FROM pg_constraint c
 CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(col, refcol, ord)
  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.col
  JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = k.refcol
  JOIN pg_class rc ON rc.oid = c.confrelid
  JOIN pg_namespace rn ON rn.oid = rc.relnamespace
 WHERE c.contype = 'f'
   AND c.conrelid = to_regclass(quote_ident(%(schema)s) || '.' || quote_ident(%(table)s))
 GROUP BY c.oid, c.conname, rn.nspname, rc.relname
 ORDER BY c.conname;

-- name: first_foreign_elsewhere
-- The first record (`i`) whose referenced row is not one of the tenant %(pin)s: missing,
-- or another tenant's. The rows found are locked (FOR SHARE) until the write commits, so
-- none moves to another tenant in between. {parent} is the referenced table, {match}
-- `p.<col> = k.<col> AND ...` over its referenced columns, {tenant} its tenant column.
SELECT (e.doc->>'i')::int FROM jsonb_array_elements(%(keys)s::jsonb) AS e(doc)
 CROSS JOIN LATERAL jsonb_populate_record(NULL::{parent}, e.doc->'k') AS k
 WHERE NOT EXISTS (SELECT FROM {parent} AS p
                    WHERE {match} AND p.{tenant}::text = %(pin)s FOR SHARE)
 ORDER BY 1 LIMIT 1;

-- name: purge_mutations
-- Forget a few pushed mutation ids older than the retention window (PGTIDE_MUTATION_TTL);
-- rows another push holds are skipped, not waited for.
DELETE FROM pgtide.sync_mutations
 WHERE (sender, mutation_id) IN (SELECT sender, mutation_id FROM pgtide.sync_mutations
                                  WHERE applied_at < now() - %(ttl)s::interval
                                  ORDER BY applied_at LIMIT 100
                                    FOR UPDATE SKIP LOCKED);

-- name: logged_mutation
-- The transaction that applied a mutation id of this sender, by the log: for an id
-- resent after sync_mutations forgot it. The sender is who the log records (actor, origin).
SELECT txid::text FROM pgtide.sync_log
 WHERE mutation_id = %(mutation_id)s AND actor IS NOT DISTINCT FROM %(actor)s
   AND origin IS NOT DISTINCT FROM %(origin)s
 ORDER BY id LIMIT 1;

-- name: no_statement_timeout
-- For the rest of this transaction only: a CSV import's COPY may take longer than the
-- API's statement timeout.
SET LOCAL statement_timeout = 0;
