#!/usr/bin/env bash
# Backfill benchmark on the local PostgreSQL. Not a test: it measures, it does not assert.
#
#   (a) a fixed-rate pgbench workload (point reads, updates, inserts) on a 1,000,000-row table:
#       p50/p99/max latency and failed transactions, before and during a backfill that runs with
#       the default throttle;
#   (b) unthrottled backfill rows/s on an idle database next to one plain UPDATE of the table;
#   (c) unthrottled rows/s (and phased's peak RSS) at 100k, 1M and 5M rows.
#
# Usage:  cargo build --release && bench/backfill.sh
# Env:    PGHOST PGPORT PGUSER (default 127.0.0.1 5432 postgres), PHASED (the binary),
#         SIZES ("100000 1000000 5000000"), RATE (workload tx/s, 200), CLIENTS (4),
#         BASELINE_SECS (60), REPEATS (3: runs per size, the median is reported), OUT (bench/out), THROTTLE (extra backfill options for (a), e.g.
#         ", pause: 10ms"; empty = the default throttle)
# Prints a markdown summary on stdout; raw pgbench logs stay in $OUT.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
PHASED="${PHASED:-$PWD/target/release/phased}"
SIZES="${SIZES-100000 1000000 5000000}"
RATE="${RATE:-200}"
CLIENTS="${CLIENTS:-4}"
BASELINE_SECS="${BASELINE_SECS:-60}"
OUT="${OUT:-$PWD/bench/out}"
THROTTLE="${THROTTLE:-}"
REPEATS="${REPEATS:-3}"
DB=phased_bench
URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
BENCH="$PWD/bench"

[ -x "$PHASED" ] || { echo "build first: cargo build --release ($PHASED missing)" >&2; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT"
sql() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

fresh_db() {
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
}

# A fresh accounts table of $1 rows (email_lower empty), vacuumed and analysed.
fresh_table() {
  sql -c "DROP TABLE IF EXISTS accounts; DROP SCHEMA IF EXISTS phased CASCADE;" 2>/dev/null
  sql -c "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL, balance bigint NOT NULL DEFAULT 0, email_lower text)" \
      -c "INSERT INTO accounts (id, email) SELECT i, 'User' || i || '@Example.COM' FROM generate_series(1, $1) AS i" \
      -c "VACUUM ANALYZE accounts" -c "CHECKPOINT"
}

# Runs a plan; prints "<seconds> <peak RSS kB>".
run_plan() {
  local plan=$1 phase=$2 start end
  start=$(now)
  /usr/bin/time -f "%M" -o "$OUT/rss" "$PHASED" run "$plan" --phase "$phase" --database "$URL" --format json \
    >"$OUT/run-$phase.ndjson"
  end=$(now)
  echo "$(echo "$end - $start" | bc) $(cat "$OUT/rss")"
}

# Starts the pgbench workload in the background, logging every transaction to $OUT/$1*; runs
# until stopped. One run for before, during and after, cut into windows by time: a pgbench
# restarted for each window would put its new connections' cold first transactions (catalog
# caches, the trigger function's compile) into short windows more than long ones.
start_workload() {
  pgbench -n -c "$CLIENTS" -j 2 -R "$RATE" -T 86400 -D maxid=1000000 \
    -f "$BENCH/workload/read.sql@5" -f "$BENCH/workload/update.sql@3" -f "$BENCH/workload/insert.sql@2" \
    -l --log-prefix="$OUT/$1" "$DB" >>"$OUT/pgbench.out" 2>&1 &
  echo $!
}

# Latency stats of the logged transactions between epochs $2 and $3 from logs $1*:
# "count p50_ms p99_ms max_ms failed".
# $4 (optional): a file of epoch seconds whose transactions, and the next second's, are left out.
stats() {
  cat "$OUT"/"$1"* | awk -v from="$2" -v to="$3" -v skip="${4:-}" '
    BEGIN { if (skip != "") while ((getline s < skip) > 0) { out[s] = 1; out[s + 1] = 1 } }
    NF < 6 { next } # the last line, cut short when pgbench is stopped
    { t = $5 + $6 / 1e6; if (t < from || t > to || int(t) in out) next;
      if ($3 == "failed" || $3 == "skipped") { failed++; next }
      print $3 / 1000 }
    END { printf "FAILED %d\n", failed + 0 }' >"$OUT/lat.txt"
  local failed
  failed=$(grep '^FAILED' "$OUT/lat.txt" | cut -d' ' -f2)
  grep -v '^FAILED' "$OUT/lat.txt" | sort -g | awk -v failed="$failed" '
    { v[NR] = $1 } END {
      if (NR == 0) { print "0 - - - " failed; exit }
      p50 = v[int(NR * 0.50) > 0 ? int(NR * 0.50) : 1]; p99 = v[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1];
      printf "%d %.2f %.2f %.2f %d\n", NR, p50, p99, v[NR], failed }'
}

# Samples full I/O pressure (the time every task waited on the disk) 5 times a second into
# $OUT/io-pressure, in the background; prints the sampler's pid, or nothing without
# /proc/pressure/io. The seconds in which the disk itself stalls — with or without a
# backfill, on a shared virtual disk — are reported apart.
start_io_monitor() {
  [ -r /proc/pressure/io ] || return 0
  while :; do
    echo "$(date +%s.%N) $(awk 'NR == 2 { split($5, a, "="); print a[2] }' /proc/pressure/io)"
    sleep 0.2
  done >"$OUT/io-pressure" 2>/dev/null &
  echo $!
}

# Seconds with more than 50 ms of full I/O pressure, one epoch second a line.
io_stall_seconds() {
  awk '{ s = int($1); if (prev != "" && $2 > prev) ms[s] += ($2 - prev) / 1000; prev = $2 }
       END { for (s in ms) if (ms[s] > 50) print s }' "$OUT/io-pressure" | sort -n
}

plan_file() { # $1 name, $2 backfill options (YAML flow mapping entries)
  cat >"$OUT/$1.yaml" <<EOF
plan: bench-$1
phases:
  - name: expand
    kind: expand
    steps:
      - dual_write: { table: accounts, set: { email_lower: "lower(NEW.email)" } }
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: accounts, set: { email_lower: "lower(email)" }, where: "email_lower IS NULL"$2 }
EOF
  echo "$OUT/$1.yaml"
}

echo "PostgreSQL $(psql -X -At -d postgres -c 'SHOW server_version') (shared_buffers $(psql -X -At -d postgres -c 'SHOW shared_buffers'), max_wal_size $(psql -X -At -d postgres -c 'SHOW max_wal_size')); $(nproc) cores; load average at start $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
fresh_db

# (b) + (c): plain UPDATE vs unthrottled backfill, per size. Unthrottled = `pause: 0s,
# target_batch_time: 200ms` (batch_size auto, no pause, no rate cap) and no trigger: the
# backfill's own cost only.
speed_table_header
for n in $SIZES; do
  speed_samples_reset "$n"
  for r in $(seq "$REPEATS"); do
    log "size $n, run $r: plain UPDATE (load $(cut -d' ' -f1 /proc/loadavg))"
    fresh_table "$n"
    start=$(now); sql -c "UPDATE accounts SET email_lower = lower(email) WHERE email_lower IS NULL"; end=$(now)
    echo "$end - $start" | bc >>"$OUT/upd-$n"
    log "size $n, run $r: backfill (load $(cut -d' ' -f1 /proc/loadavg))"
    fresh_table "$n"
    plan=$(plan_file "size-$n" ", pause: 0s, target_batch_time: 200ms")
    sed -i '/name: expand/,/dual_write/d' "$plan"
    read -r secs rss < <(run_plan "$plan" backfill)
    left=$(sql -At -c "SELECT count(*) FROM accounts WHERE email_lower IS DISTINCT FROM lower(email)")
    [ "$left" = 0 ] || { echo "backfill left $left rows wrong" >&2; exit 1; }
    echo "$secs" >>"$OUT/bf-$n"; echo "$rss" >>"$OUT/rss-$n"
  done
  speed_table_row "$n"
done

# (a): the workload before and during a backfill with the default throttle, on 1M rows, with the
# dual_write trigger in place (as in a real deploy) for both measurements.
log "workload: baseline ${BASELINE_SECS}s at $RATE tx/s"
fresh_table 1000000
sql -c "CREATE SEQUENCE IF NOT EXISTS accounts_new_ids START 100000001"
plan=$(plan_file default "$THROTTLE")
"$PHASED" run "$plan" --phase expand --database "$URL" --format json >"$OUT/expand.ndjson"
io_pid=$(start_io_monitor)
wl_pid=$(start_workload workload)
sleep 5 # warm-up: every client connected and past its first transactions
b_start=$(now); sleep "$BASELINE_SECS"; b_end=$(now)
read -r b_n b_p50 b_p99 b_max b_failed < <(stats workload "$b_start" "$b_end")

log "workload: during a backfill with the default throttle"
d_start=$(now)
"$PHASED" run "$plan" --phase backfill --database "$URL" --format json >"$OUT/backfill-default.ndjson" \
  || { kill "$wl_pid" ${io_pid:+"$io_pid"}; echo "backfill failed" >&2; exit 1; }
d_end=$(now)
d_secs=$(echo "$d_end - $d_start" | bc)
log "workload: baseline again, after the backfill"
a_start=$(now); sleep "$BASELINE_SECS"; a_end=$(now)
sleep 3 # pgbench's log buffers: the last second or so is lost when it is stopped
kill "$wl_pid"; wait "$wl_pid" 2>/dev/null || true
[ -z "$io_pid" ] || kill "$io_pid"
read -r d_n d_p50 d_p99 d_max d_failed < <(stats workload "$d_start" "$d_end")
read -r a_n a_p50 a_p99 a_max a_failed < <(stats workload "$a_start" "$a_end")
left=$(sql -At -c "SELECT count(*) FROM accounts WHERE email_lower IS DISTINCT FROM lower(email)")
aborted=$(grep -c -i "aborted\|error" "$OUT/pgbench.out" || true)

echo
echo "Workload: pgbench -R $RATE -c $CLIENTS, 50% point reads, 30% point updates, 20% inserts, on 1,000,000 rows with the dual_write trigger; latency counted from the scheduled start; load average now $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| workload at $RATE tx/s, $CLIENTS clients | transactions | p50 (ms) | p99 (ms) | max (ms) | failed |"
echo "|---|---:|---:|---:|---:|---:|"
echo "| before the backfill (${BASELINE_SECS}s) | $b_n | $b_p50 | $b_p99 | $b_max | $b_failed |"
printf "| during the backfill (%.1fs, %s) | %s | %s | %s | %s | %s |\n" "$d_secs" "${THROTTLE:-default throttle}" "$d_n" "$d_p50" "$d_p99" "$d_max" "$d_failed"
echo "| after the backfill (${BASELINE_SECS}s) | $a_n | $a_p50 | $a_p99 | $a_max | $a_failed |"
echo
echo "p99 during ÷ before: $(echo "scale=2; $d_p99 / $b_p99" | bc); during ÷ after: $(echo "scale=2; $d_p99 / $a_p99" | bc); rows left wrong after the backfill: $left;" \
  "pgbench error/abort lines: $aborted"

if [ -n "$io_pid" ]; then
  io_stall_seconds >"$OUT/io-stall-seconds"
  in_window() { awk -v from="$1" -v to="$2" '$1 >= int(from) && $1 <= to { n++ } END { print n + 0 }' "$OUT/io-stall-seconds"; }
  read -r _ _ bc_p99 _ _ < <(stats workload "$b_start" "$b_end" "$OUT/io-stall-seconds")
  read -r _ _ dc_p99 _ _ < <(stats workload "$d_start" "$d_end" "$OUT/io-stall-seconds")
  read -r _ _ ac_p99 _ _ < <(stats workload "$a_start" "$a_end" "$OUT/io-stall-seconds")
  echo
  echo "Seconds in which the disk itself stalled (> 50 ms of full I/O pressure, /proc/pressure/io):" \
    "before $(in_window "$b_start" "$b_end"), during $(in_window "$d_start" "$d_end"), after $(in_window "$a_start" "$a_end")." \
    "Without the transactions that ended in them or in the second after: p99 before $bc_p99 ms, during $dc_p99 ms," \
    "after $ac_p99 ms; during ÷ before: $(echo "scale=2; $dc_p99 / $bc_p99" | bc)"
fi
