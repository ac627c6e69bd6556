#!/usr/bin/env bash
# Writer cost by hand (docs/benchmarks.md, "the writer path"): pgbench single-row INSERTs
# into a plain and a tracked table of a scratch database `pgtide_writer_cost`, with a
# sequencer variant running (scripts/seq_variant.py: current, noseal, noreturn,
# noseal-noreturn; `none` holds the doorbell flag at 0 and runs no sequencer).
#   ADMIN=postgresql://postgres@127.0.0.1:5432 scripts/writer_cost.sh current
# Run it on a quiet machine, from the repository root, with the project installed.
set -euo pipefail
variant=${1:-current}
admin=${ADMIN:-postgresql://postgres@127.0.0.1:5432}
url=$admin/pgtide_writer_cost
work=$(mktemp -d)
trap 'pkill -f scripts/seq_variant.py || true; rm -rf "$work"' EXIT
psql "$admin/postgres" -qc "DROP DATABASE IF EXISTS pgtide_writer_cost WITH (FORCE)" \
    -c "CREATE DATABASE pgtide_writer_cost"
DATABASE_URL=$url pgtide migrate >/dev/null 2>&1
psql "$url" -q <<'SQL'
CREATE TABLE b_plain (id bigserial PRIMARY KEY, grp int, v int, note text);
CREATE TABLE b_tracked (id bigserial PRIMARY KEY, grp int, v int, note text);
SELECT pgtide.track_v1('b_tracked');
SQL
for t in plain tracked; do
  printf '\\set g random(0, 999)\nINSERT INTO b_%s (grp, v, note) VALUES (:g, 1, %s);\n' \
      "$t" "'bench'" > "$work/$t.sql"
done
if [ "$variant" = none ]; then
  psql "$url" -qc "SELECT setval('pgtide.sync_doorbell', 0)" >/dev/null
else
  DATABASE_URL=$url python scripts/seq_variant.py "$variant" > "$work/seq.log" 2>&1 &
  sleep 2
fi
tps() { pgbench -n -M prepared -c 8 -j 2 -T 8 -f "$work/$1.sql" "$url" 2>/dev/null \
          | sed -n 's/^tps = \([0-9]*\).*/\1/p'; }
for _ in 1 2; do
  t=$(tps tracked); p=$(tps plain)
  echo "$variant: tracked $t tps, plain $p tps, ratio $(python3 -c "print(round($t / $p, 2))")"
done
