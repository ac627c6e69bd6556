-- pgtide's roles and grants (docs/audit.md). Not a migration: roles are cluster-wide and
-- creating them needs CREATEROLE. Run it once per database, after `pgtide migrate`, as
-- the owner of pgtide's tables or a superuser:
--     psql "$DATABASE_URL" -f schema/roles.sql
-- Then give each login role the group it needs (GRANT pgtide_api TO app_login), and grant
-- pgtide_api the DML on your own tracked tables. Idempotent.
--
--   pgtide_writer     any role that writes tracked tables (your services, psql users):
--                     capture runs as the writing role, so it appends to sync_log and
--                     reads the doorbell flag. Nothing else of pgtide's.
--   pgtide_api        `pgtide serve`: writes tracked tables (capture appends to pgtide.sync_log as
--                     this role), sequences and seals, reads the log. No UPDATE or DELETE
--                     on pgtide.sync_log, pgtide.sync_order or pgtide.sync_seal.
--   pgtide_auditor    reads the log, the seals and the retention record; writes nothing.
--   pgtide_retention  `pgtide retention`: deletes old pgtide.sync_order/pgtide.sync_log rows (the
--                     append-only guard still requires SET LOCAL pgtide.retention = 'on')
--                     and records how far it removed. Cannot UPDATE anything in the log.
-- The privileges are the boundary: the guard's switch is a setting anyone can set.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['pgtide_writer', 'pgtide_api', 'pgtide_auditor', 'pgtide_retention'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA pgtide TO pgtide_writer, pgtide_api, pgtide_auditor, pgtide_retention;

GRANT INSERT ON pgtide.sync_log TO pgtide_writer;
GRANT SELECT ON SEQUENCE pgtide.sync_doorbell TO pgtide_writer;

-- Capture runs as the writing role: it appends to pgtide.sync_log and reads the doorbell flag.
GRANT SELECT, INSERT ON pgtide.sync_log TO pgtide_api;
-- The sequencer (inside serve): appends to pgtide.sync_order and pgtide.sync_seal, moves its state
-- and sets the doorbell flag (setval needs UPDATE on the sequence).
GRANT SELECT, INSERT ON pgtide.sync_order, pgtide.sync_seal TO pgtide_api;
GRANT SELECT, UPDATE ON pgtide.sync_sequencer TO pgtide_api;
GRANT SELECT, UPDATE ON SEQUENCE pgtide.sync_doorbell TO pgtide_api;
GRANT SELECT ON pgtide.sync_tracked, pgtide.sync_retention TO pgtide_api;

GRANT SELECT ON pgtide.sync_log, pgtide.sync_order, pgtide.sync_seal, pgtide.sync_sequencer, pgtide.sync_tracked, pgtide.sync_retention
    TO pgtide_auditor;

GRANT SELECT, DELETE ON pgtide.sync_log, pgtide.sync_order TO pgtide_retention;
GRANT SELECT, INSERT, UPDATE ON pgtide.sync_retention TO pgtide_retention;
GRANT SELECT ON pgtide.sync_seal, pgtide.sync_sequencer TO pgtide_retention;
