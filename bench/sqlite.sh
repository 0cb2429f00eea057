#!/usr/bin/env bash
# Backfill benchmark on SQLite, the embedded default. Not a test: it measures, it does not assert.
#
#   Unthrottled backfill rows/s next to one plain UPDATE of the whole table, at each size, and
#   phased's peak RSS: the per-row cost should stay flat as the table grows.
#
# Usage:  cargo build --release && bench/sqlite.sh
# Env:    PHASED (the binary), SIZES ("100000 1000000 5000000"), REPEATS (3: runs per size, the
#         median is reported), OUT (bench/out-sqlite)
# Prints a markdown table on stdout.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
PHASED="${PHASED:-$PWD/target/release/phased}"
SIZES="${SIZES-100000 1000000 5000000}"
REPEATS="${REPEATS:-3}"
OUT="${OUT:-$PWD/bench/out-sqlite}"

[ -x "$PHASED" ] || { echo "build first: cargo build --release ($PHASED missing)" >&2; exit 2; }
command -v sqlite3 >/dev/null || { echo "sqlite3 (the CLI) is needed to build the tables" >&2; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT"
DB="$OUT/bench.db"

# A fresh accounts table of $1 rows (email_lower empty), in WAL mode as an application's
# database would be.
fresh_table() {
  rm -f "$DB" "$DB-wal" "$DB-shm"
  sqlite3 "$DB" >/dev/null <<EOF
PRAGMA journal_mode = WAL;
CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT NOT NULL, balance INTEGER NOT NULL DEFAULT 0, email_lower TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
INSERT INTO accounts (id, email) SELECT i, 'User' || i || '@Example.COM' FROM n;
ANALYZE;
EOF
}

cat >"$OUT/plan.yaml" <<EOF
plan: bench-sqlite
phases:
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: accounts, set: { email_lower: "lower(email)" }, where: "email_lower IS NULL", pause: 0s, target_batch_time: 200ms }
EOF

echo "SQLite $(sqlite3 --version | cut -d' ' -f1) (phased's bundled SQLite: $(grep -A1 'name = "libsqlite3-sys"' Cargo.lock | sed -n 's/version = "\(.*\)"/libsqlite3-sys \1/p')); $(nproc) cores; load average at start $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
speed_table_header
for n in $SIZES; do
  speed_samples_reset "$n"
  for r in $(seq "$REPEATS"); do
    log "size $n, run $r: plain UPDATE"
    fresh_table "$n"
    start=$(now); sqlite3 "$DB" "UPDATE accounts SET email_lower = lower(email) WHERE email_lower IS NULL"; end=$(now)
    echo "$end - $start" | bc >>"$OUT/upd-$n"
    log "size $n, run $r: backfill"
    fresh_table "$n"
    start=$(now)
    /usr/bin/time -f "%M" -o "$OUT/rss" "$PHASED" run "$OUT/plan.yaml" --database "sqlite://$DB" --format json >"$OUT/run.ndjson"
    end=$(now)
    left=$(sqlite3 "$DB" "SELECT count(*) FROM accounts WHERE email_lower IS NOT lower(email)")
    [ "$left" = 0 ] || { echo "backfill left $left rows wrong" >&2; exit 1; }
    echo "$end - $start" | bc >>"$OUT/bf-$n"; cat "$OUT/rss" >>"$OUT/rss-$n"
  done
  speed_table_row "$n"
done
rm -f "$DB" "$DB-wal" "$DB-shm"
