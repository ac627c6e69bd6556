-- depends: 0007_apps
-- Hostile clients (issue 13): pushed mutation ids expire, a resent one is recognised in
-- the log, and last-write-wins clocks know their row's branch.

-- The tenant (branch) of the row a pushed clock belongs to, so a branch-pinned push never
-- compares with, or shows, another branch's clock. Clocks kept before this are NULL: a
-- pinned push ignores them.
ALTER TABLE sync_clocks ADD COLUMN IF NOT EXISTS tenant text;

-- Mutation ids are removed after PGTIDE_MUTATION_TTL, oldest first, in small batches.
CREATE INDEX IF NOT EXISTS sync_mutations_applied_idx ON sync_mutations (applied_at);

-- A mutation resent after its id was removed is found in the log by its id and sender
-- (actor, origin). Partial: only writes through the API with a mutation id or an
-- Idempotency-Key carry one. Created only if missing, checked without a lock: on a large
-- log, build it first with CREATE INDEX CONCURRENTLY under the same name and this
-- migration never blocks writers (as in 0005_audit).
DO $$
BEGIN
    IF to_regclass('pgtide.sync_log_mutation_idx') IS NULL THEN
        CREATE INDEX sync_log_mutation_idx ON sync_log (mutation_id, actor)
         WHERE mutation_id IS NOT NULL;
    END IF;
END
$$;
