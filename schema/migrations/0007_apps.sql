-- depends: 0005_audit 0006_auth
-- The engine in its own schema, with apps beside it (docs/design.md, "Apps").
-- Every migration of the engine runs with search_path = pgtide; nothing here
-- touches another schema.

-- The installed apps: `serve` exposes their resources, `migrate` keeps them current.
CREATE TABLE IF NOT EXISTS sync_apps (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    ref          text NOT NULL,  -- how to import it: a shipped name, an entry point, module:attr
    installed_at timestamptz NOT NULL DEFAULT now()
);

-- Resources may be keyed by uuid, bigint or text: the write API's bookkeeping keeps
-- row keys as text, and a row's last pushed ETag (its version, for tables with one).
ALTER TABLE sync_mutations ALTER COLUMN row_id TYPE text USING row_id::text;
ALTER TABLE sync_clocks ALTER COLUMN row_id TYPE text USING row_id::text;
ALTER TABLE sync_clocks RENAME COLUMN version TO etag;
ALTER TABLE sync_clocks ALTER COLUMN etag TYPE text USING etag::text;

-- A branch pin compares as the tenant column's type (uuid, bigint, text).
ALTER TABLE sync_tokens ALTER COLUMN branch_id TYPE text USING branch_id::text;

-- Pushed mutation ids belong to their sender: the token's name (the actor the log
-- records) and the push's client_id. Ids pushed before this migration take the sender
-- their change was logged with.
ALTER TABLE sync_mutations ADD COLUMN sender text NOT NULL DEFAULT '';
UPDATE sync_mutations m
   SET sender = coalesce(l.actor, '') || '/' || coalesce(m.client_id, '')
  FROM sync_log l
 WHERE l.txid = m.txid AND l.mutation_id = m.mutation_id;
ALTER TABLE sync_mutations DROP CONSTRAINT sync_mutations_pkey;
ALTER TABLE sync_mutations ADD PRIMARY KEY (sender, mutation_id);
ALTER TABLE sync_mutations ALTER COLUMN sender DROP DEFAULT;

-- The seal of one batch, as in 0005_audit, with every table named by its schema: it
-- runs on the sequencer's connection, whose search_path is the database's default.
CREATE OR REPLACE FUNCTION pgtide.seal_row_v1(seqs bigint[], log_ids bigint[]) RETURNS SETOF pgtide.sync_seal
LANGUAGE plpgsql AS $fn$
DECLARE
    prev pgtide.sync_seal;
    next pgtide.sync_seal;
BEGIN
    IF coalesce(cardinality(seqs), 0) = 0
       OR cardinality(seqs) IS DISTINCT FROM cardinality(log_ids) THEN
        RETURN;  -- nothing sequenced: no seal
    END IF;
    SELECT * INTO prev FROM pgtide.sync_seal ORDER BY seal_no DESC LIMIT 1;
    SELECT prev.seal_no + 1, min(u.seq), max(u.seq),
           sha256(prev.hash || string_agg(u.d, ''::bytea ORDER BY u.seq)), prev.hash,
           string_agg(substr(u.d, 1, 8), ''::bytea ORDER BY u.seq),
           min(u.at), max(u.at), greatest(now(), max(u.at), prev.sealed_at)
      INTO next
      FROM (SELECT o.seq, pgtide.log_digest_v1(o.seq, l) AS d, l.at
              FROM pgtide.sync_order o JOIN pgtide.sync_log l ON l.id = o.log_id
             WHERE o.seq > prev.last_seq AND o.seq < seqs[1]
            UNION ALL
            SELECT b.seq, pgtide.log_digest_v1(b.seq, l), l.at
              FROM unnest(seqs, log_ids) AS b(seq, log_id)
              JOIN pgtide.sync_log l ON l.id = b.log_id) AS u;
    RETURN NEXT next;
END
$fn$;
