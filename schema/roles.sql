-- pgtide's roles and grants (docs/audit.md). Not a migration: roles are cluster-wide and
-- creating them needs CREATEROLE. Run it once per database, after `pgtide migrate`, as
-- the owner of pgtide's tables or a superuser:
--     psql "$DATABASE_URL" -f schema/roles.sql
-- Then give each login role the group it needs (GRANT pgtide_api TO app_login), and grant
-- pgtide_api the DML on your own tracked tables. Idempotent.
--
--   pgtide_api        `pgtide serve`: writes tracked tables (capture appends to sync_log as
--                     this role), sequences and seals, reads the log. No UPDATE or DELETE
--                     on sync_log, sync_order or sync_seal.
--   pgtide_auditor    reads the log, the seals and the retention record; writes nothing.
--   pgtide_retention  `pgtide retention`: deletes old sync_order/sync_log rows (the
--                     append-only guard still requires SET LOCAL pgtide.retention = 'on')
--                     and records how far it removed. Cannot UPDATE anything in the log.
-- The privileges are the boundary: the guard's switch is a setting anyone can set.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['pgtide_api', 'pgtide_auditor', 'pgtide_retention'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA pgtide TO pgtide_api, pgtide_auditor, pgtide_retention;

-- Capture runs as the writing role: it appends to sync_log and reads the doorbell flag.
GRANT SELECT, INSERT ON sync_log TO pgtide_api;
-- The sequencer (inside serve): appends to sync_order and sync_seal, moves its state
-- and sets the doorbell flag (setval needs UPDATE on the sequence).
GRANT SELECT, INSERT ON sync_order, sync_seal TO pgtide_api;
GRANT SELECT, UPDATE ON sync_sequencer TO pgtide_api;
GRANT SELECT, UPDATE ON SEQUENCE sync_doorbell TO pgtide_api;
GRANT SELECT ON sync_tracked, sync_retention TO pgtide_api;

GRANT SELECT ON sync_log, sync_order, sync_seal, sync_sequencer, sync_tracked, sync_retention
    TO pgtide_auditor;

GRANT SELECT, DELETE ON sync_log, sync_order TO pgtide_retention;
GRANT SELECT, INSERT, UPDATE ON sync_retention TO pgtide_retention;
GRANT SELECT ON sync_seal, sync_sequencer TO pgtide_retention;
