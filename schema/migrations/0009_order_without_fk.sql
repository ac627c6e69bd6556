-- depends: 0008_guard
-- sync_order keeps its unique log_id (a change is sequenced once) but loses its foreign
-- key to sync_log: the key's check ran a lookup and took a row lock on the log row for
-- every change sequenced, about a tenth of the sequencer's cost (docs/benchmarks.md).
-- What it guarded holds by construction: the sequencer inserts only ids it selects
-- from sync_log in the same statement, sync_log is append-only, and retention removes
-- a range from sync_order and sync_log in one transaction. `pgtide audit verify`
-- names an order row whose log row is missing.
ALTER TABLE sync_order DROP CONSTRAINT IF EXISTS sync_order_log_id_fkey;
