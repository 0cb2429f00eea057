#!/usr/bin/env bash
# Backfill benchmark on the local PostgreSQL. Not a test: it measures, it does not assert.
#
#   (a) the backfill's pace next to a fixed-rate pgbench workload (point reads, updates,
#       inserts) on a $ROWS-row table with the dual_write trigger in place, for each scenario
#       and each throttle: the backfill's wall time and rows/s (and its speed ÷ the unthrottled
#       run of the same scenario), and for the window before and the window during the
#       backfill the workload's p99, max latency, transactions over 100 ms and failed ones.
#       Scenarios: `light` (RATE tx/s), `heavy` (HEAVY_RATE, default 50% of the transactions/s
#       the machine served in a 10 s unthrottled pgbench run with the trigger in place), `idle` (no workload). Throttles:
#       `auto` (the default: no knob in the plan) and `unthrottled` (`pause: 0s,
#       target_batch_time: 50ms`), or any `name=, yaml options` of your own in THROTTLES
#       (entries separated by `;`, e.g. "auto;gentle=, pause: 28ms").
#       Also per run: the p99 ratio itself, the same ratio between the two halves of the
#       window before (how far p99 moves with no backfill), the execution p99 ratio (latency
#       less pgbench's schedule lag: what the server took), the seconds the disk stalled in
#       each window, the p99 ratio without those seconds, and the control: the p99 ratio of a
#       window after the backfill as long as its own (at most AFTER_SECS), the workload alone;
#       and in a table of its own, the data disk's writes, MB written and flushes per second
#       in the window before and the window during, the CPU phased's process used, and the
#       buffers the server wrote while the backfill ran (by backends — the backfill's own
#       evictions mostly —, the background writer, the checkpointer) and its checkpoints.
#       With PAUSE_CHECK=1, one more auto run is paused with `phased pause` a few seconds in:
#       the time from the pause to the last batch committed, and the resume to the end.
#       With INTERLEAVE=S (seconds), each backfill of (a) is paused and resumed with `phased
#       pause|resume` every S seconds: the workload's p99 in the windows with the backfill
#       running ÷ its p99 in the windows between them, paused, of the same run (the first
#       second of each window, the pause or resume taking hold, left out). Slow drifts of the
#       machine fall on both sides alike, which a window before and a window during cannot
#       tell from the backfill. Its own table; rows/s then count the running windows only.
#       With DISTURB=P:MB, trouble that comes and goes, the same for every build: while each
#       backfill of (a) runs, every P seconds MB MiB are written to a file in $OUT and synced
#       (dd conv=fsync), which stalls the WAL's flushes for tens of milliseconds on this
#       machine's disk. For comparing builds' pace through it, not for the goals: the window
#       before has no such writes.
#   (b) unthrottled backfill rows/s on an idle database next to one plain UPDATE of the table;
#   (c) unthrottled rows/s (and phased's peak RSS) at each of SIZES.
#
# Usage:  cargo build --release && bench/backfill.sh
# Env:    PGHOST PGPORT PGUSER (default 127.0.0.1 5432 postgres), PHASED (the binary),
#         SIZES ("100000 1000000 5000000"; empty skips (b) and (c)), REPEATS (3: runs per size
#         in (b)/(c), the median is reported), ROWS (1000000: the table of (a)),
#         SCENARIOS ("light heavy idle"), THROTTLES ("auto;unthrottled"), RATE (light
#         workload tx/s, 200), HEAVY_RATE (tx/s; default 50% of the measured capacity with the trigger),
#         CLIENTS (4), BASELINE_SECS (60: the window before each backfill), AFTER_SECS (120:
#         the longest window after it), PAUSE_CHECK (0), INTERLEAVE (empty: off),
#         DISTURB (empty: off; P:MB, e.g. 2:128),
#         RUST_LOG (e.g. phased=debug: each look of the pace, in $OUT/backfill-*.log),
#         RUNS (1: runs of each scenario and throttle in (a), in turn; with more, a summary of
#         each pair's median and range follows the table), OUT (bench/out)
# A short smoke run: SIZES= ROWS=100000 BASELINE_SECS=10 bench/backfill.sh
# Prints a markdown summary on stdout; raw pgbench logs and NDJSON events stay in $OUT.
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
REPEATS="${REPEATS:-3}"
ROWS="${ROWS:-1000000}"
SCENARIOS="${SCENARIOS-light heavy idle}"
THROTTLES="${THROTTLES-auto;unthrottled}"
HEAVY_RATE="${HEAVY_RATE:-}"
PAUSE_CHECK="${PAUSE_CHECK:-0}"
AFTER_SECS="${AFTER_SECS:-120}"
INTERLEAVE="${INTERLEAVE:-}"
DISTURB="${DISTURB:-}"
RUNS="${RUNS:-1}"
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
start_workload() { # $1 log prefix, $2 rate (tx/s)
  pgbench -n -c "$CLIENTS" -j 2 -R "$2" -T 86400 -D maxid="$ROWS" \
    -f "$BENCH/workload/read.sql@5" -f "$BENCH/workload/update.sql@3" -f "$BENCH/workload/insert.sql@2" \
    -l --log-prefix="$OUT/$1" "$DB" >>"$OUT/pgbench.out" 2>&1 &
  echo $!
}

# Latency stats of the logged transactions between epochs $2 and $3 from logs $1*:
# "count p50_ms p99_ms max_ms failed over_100ms".
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
      if (NR == 0) { print "0 - - - " failed " 0"; exit }
      p50 = v[int(NR * 0.50) > 0 ? int(NR * 0.50) : 1]; p99 = v[int(NR * 0.99) > 0 ? int(NR * 0.99) : 1];
      over = 0; for (i = 1; i <= NR; i++) if (v[i] > 100) over++;
      printf "%d %.2f %.2f %.2f %d %d\n", NR, p50, p99, v[NR], failed, over }'
}

# p99 (ms) of the logged transactions' execution between epochs $2 and $3 from logs $1*: their
# latency without pgbench's schedule lag (the time a transaction waited in pgbench for its
# client to be free), i.e. what the server took.
exec_p99() {
  cat "$OUT"/"$1"* | awk -v from="$2" -v to="$3" '
    NF < 7 { next }
    { t = $5 + $6 / 1e6; if (t < from || t > to || $3 == "failed" || $3 == "skipped") next;
      print ($3 - $7) / 1000 }' | sort -g | awk '{ v[NR] = $1 } END {
      if (NR == 0) { print "-"; exit }
      i = int(NR * 0.99); if (i < 1) i = 1; printf "%.2f\n", v[i] }'
}

# The block device PostgreSQL's data directory is on (vda, sda, nvme0n1, …), for its
# counters in /proc/diskstats; empty when it cannot be told.
data_disk() {
  local dir dev
  dir=$(psql -X -At -d postgres -c 'SHOW data_directory' 2>/dev/null) || return 0
  dev=$(df --output=source "$dir" 2>/dev/null | tail -1)
  dev=$(basename "$(readlink -f "$dev" 2>/dev/null)")
  # A partition's counters are its disk's share; the whole disk is what stalls.
  [ -e "/sys/class/block/$dev/partition" ] && dev=$(basename "$(readlink -f "/sys/class/block/$dev/..")")
  grep -qw "$dev" /proc/diskstats 2>/dev/null && echo "$dev"
}

# Samples full I/O pressure (the time every task waited on the disk) 5 times a second into
# $OUT/io-pressure, in the background, with the data disk's writes completed, sectors
# written, milliseconds spent writing, flushes completed and milliseconds spent flushing
# (cumulative, from /proc/diskstats; - when unknown); prints the sampler's pid, or nothing
# without /proc/pressure/io. The seconds in which the disk itself stalls — with or without a
# backfill, on a shared virtual disk — are reported apart. (Full pressure also counts a
# process's own waits for its flushes when nothing else runs: a backfill committing 300 small
# batches a second adds some 30 ms of it each second on a disk that is not slow at all. The
# disk's own latency per write and per flush tells the two apart.)
start_io_monitor() {
  [ -r /proc/pressure/io ] || return 0
  local disk
  disk=$(data_disk)
  while :; do
    echo "$(date +%s.%N) $(awk 'NR == 2 { split($5, a, "="); print a[2] }' /proc/pressure/io)" \
      "$(awk -v d="$disk" '$3 == d { print $8, $10, $11, (NF >= 19 ? $18 " " $19 : "- -"); f = 1 } END { if (!f) print "- - - - -" }' /proc/diskstats)"
    sleep 0.2
  done >"$OUT/io-pressure" 2>/dev/null &
  echo $!
}

# The data disk between epochs $1 and $2, from the sampler: "writes/s MB/s flushes/s
# ms-per-write ms-per-flush" (- when not sampled).
disk_rates() {
  awk -v from="$1" -v to="$2" '
    $1 >= from && $1 <= to && $3 != "-" {
      if (t0 == "") { t0 = $1; w0 = $3; s0 = $4; m0 = $5; f0 = $6; fm0 = $7 }
      t1 = $1; w1 = $3; s1 = $4; m1 = $5; f1 = $6; fm1 = $7 }
    END { if (t0 == "" || t1 <= t0) { print "- - - - -"; exit }
          d = t1 - t0; fl = f0 == "-" ? "-" : sprintf("%.0f", (f1 - f0) / d)
          wl = w1 > w0 ? sprintf("%.2f", (m1 - m0) / (w1 - w0)) : "-"
          fw = (f0 != "-" && f1 > f0) ? sprintf("%.2f", (fm1 - fm0) / (f1 - f0)) : "-"
          printf "%.0f %.1f %s %s %s\n", (w1 - w0) / d, (s1 - s0) * 512 / 1e6 / d, fl, wl, fw }' "$OUT/io-pressure"
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
[ -z "$SIZES" ] || speed_table_header
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

# (a): the backfill next to the workload, per scenario and throttle, on $ROWS rows with the
# dual_write trigger in place (as in a real deploy).
throttle_options() { # $1: auto | unthrottled | name=, yaml options
  case "$1" in
    auto) echo "" ;;
    unthrottled) echo ", pause: 0s, target_batch_time: 50ms" ;;
    *=*) echo "${1#*=}" ;;
    *) echo "unknown throttle $1 (auto, unthrottled or name=, options)" >&2; exit 2 ;;
  esac
}

# The transactions/s the machine serves with this workload, unthrottled, for 10 s, on the
# table as the backfill finds it (with the dual_write trigger, which every write pays for).
capacity() {
  local plan
  fresh_table "$ROWS" >/dev/null
  sql -c "DROP SEQUENCE IF EXISTS accounts_new_ids" -c "CREATE SEQUENCE accounts_new_ids START 100000001"
  plan=$(plan_file capacity "")
  "$PHASED" run "$plan" --phase expand --database "$URL" --format json >/dev/null
  pgbench -n -c "$CLIENTS" -j 2 -T 10 -D maxid="$ROWS" \
    -f "$BENCH/workload/read.sql@5" -f "$BENCH/workload/update.sql@3" -f "$BENCH/workload/insert.sql@2" \
    "$DB" 2>/dev/null | awk '/^tps = / { printf "%d\n", $3 }'
}

# DISTURB=P:MB: writes MB MiB and syncs them every P seconds until killed; prints its pid.
start_disturb() {
  [ -n "$DISTURB" ] || return 0
  local period=${DISTURB%%:*} mib=${DISTURB##*:}
  (
    while :; do
      sleep "$period"
      dd if=/dev/zero of="$OUT/disturb" bs=1M count="$mib" conv=fsync 2>/dev/null
      rm -f "$OUT/disturb"
    done
  ) >/dev/null 2>&1 &
  echo $!
}

stop_disturb() { # $1 pid, or empty
  [ -n "${1:-}" ] || return 0
  # Not a child of this shell (started in a command substitution): its dd, then itself.
  pkill -P "$1" 2>/dev/null || true
  kill "$1" 2>/dev/null || true
  while kill -0 "$1" 2>/dev/null; do sleep 0.1; done
  rm -f "$OUT/disturb"
}

# Runs the backfill of plan $1 in the background, pausing and resuming it every $INTERLEAVE
# seconds until it ends; appends "on|off <from> <to>" per window to $2 (the first second of
# each left out: the pause or resume taking hold). Returns the backfill's exit status.
run_interleaved() { # $1 plan, $2 windows file, $3 tag
  local plan=$1 windows=$2 tag=$3 pid state=on from
  : >"$windows"
  /usr/bin/time -f "%U %S" -o "$OUT/cpu-$tag" "$PHASED" run "$plan" --phase backfill --database "$URL" --format json >"$OUT/backfill-$tag.ndjson" \
    2>"$OUT/backfill-$tag.log" &
  pid=$!
  from=$(now)
  while kill -0 "$pid" 2>/dev/null; do
    # Sleep in short steps, so the backfill's end closes the window at once.
    local until_t
    until_t=$(echo "$from + $INTERLEAVE" | bc -l)
    while kill -0 "$pid" 2>/dev/null && [ "$(echo "$(now) < $until_t" | bc)" = 1 ]; do sleep 0.1; done
    echo "$state $(echo "$from + 1" | bc -l) $(now)" >>"$windows"
    kill -0 "$pid" 2>/dev/null || break
    if [ "$state" = on ]; then
      "$PHASED" pause "$plan" --database "$URL" >/dev/null; state=off
    else
      "$PHASED" resume "$plan" --database "$URL" >/dev/null; state=on
    fi
    from=$(now)
  done
  # A backfill paused at its very end would wait: resume whatever state it is left in.
  "$PHASED" resume "$plan" --database "$URL" >/dev/null 2>&1 || true
  wait "$pid"
}

# p99 (ms) of the logged transactions from logs $1* in the windows of $2 of kind $3 (on|off),
# pooled: "count p99". $4 (optional): a file of epoch seconds whose transactions, and the next
# second's, are left out (the disk's stalled seconds).
pooled_p99() {
  cat "$OUT"/"$1"* | awk -v windows="$2" -v kind="$3" -v skip="${4:-}" '
    BEGIN { while ((getline line < windows) > 0) { split(line, w, " "); if (w[1] == kind && w[3] > w[2]) { n++; lo[n] = w[2]; hi[n] = w[3] } }
            if (skip != "") while ((getline s < skip) > 0) { out[s] = 1; out[s + 1] = 1 } }
    NF < 6 { next }
    { t = $5 + $6 / 1e6; if ($3 == "failed" || $3 == "skipped" || int(t) in out) next;
      for (i = 1; i <= n; i++) if (t >= lo[i] && t <= hi[i]) { print $3 / 1000; break } }' |
    sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "0 -"; exit }
      i = int(NR * 0.99); if (i < 1) i = 1; printf "%d %.2f\n", NR, v[i] }'
}

# The median over the whole seconds inside the windows of $2 of kind $3 (on|off) of each
# second's p99 (ms), from logs $1*: "seconds median". A few bad seconds (a disk stalling, the
# machine's own hiccups) make a pooled p99 whichever side they fall on; the median second
# shows what the workload had most of the time.
median_second_p99() {
  cat "$OUT"/"$1"* | awk -v windows="$2" -v kind="$3" '
    BEGIN { while ((getline line < windows) > 0) { split(line, w, " "); if (w[1] == kind && w[3] > w[2]) { n++; lo[n] = w[2]; hi[n] = w[3] } } }
    NF < 6 { next }
    { if ($3 == "failed" || $3 == "skipped") next; s = $5 + 0;
      for (i = 1; i <= n; i++) if (s >= lo[i] && s + 1 <= hi[i]) { print s, $3 / 1000; break } }' |
    sort -k1,1n -k2,2g | awk '
      function flush() { if (c > 0) { i = int(c * 0.99); if (i < 1) i = 1; print v[i] } c = 0 }
      $1 != cur { flush(); cur = $1 }
      { v[++c] = $2 }
      END { flush() }' |
    sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print "0 -"; exit }
      printf "%d %.2f\n", NR, v[int((NR + 1) / 2)] }'
}

# Buffers (8 kB) as MB.
mb() { echo "$(( $1 * 8 / 1024 ))"; }

# The server's buffer writes so far: "by backends, by the background writer, by the
# checkpointer (buffers), checkpoints". PostgreSQL 17 moved the backends' and the
# checkpointer's counts out of pg_stat_bgwriter (to pg_stat_io and pg_stat_checkpointer).
buffer_writes() {
  if [ "$(psql -X -At -d postgres -c "SELECT current_setting('server_version_num')::int >= 170000")" = t ]; then
    psql -X -At -F' ' -d postgres -c "SELECT (SELECT coalesce(sum(writes), 0)::bigint FROM pg_stat_io WHERE backend_type = 'client backend'), (SELECT buffers_clean FROM pg_stat_bgwriter), buffers_written, num_timed + num_requested FROM pg_stat_checkpointer"
  else
    psql -X -At -F' ' -d postgres -c "SELECT buffers_backend, buffers_clean, buffers_checkpoint, checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
  fi
}

# One backfill next to a workload at $2 tx/s (0: none), throttle $3 (see throttle_options);
# scenario $1. Appends a
# table row to $OUT/rows.md and the wall time to $OUT/secs-$1-$3.
measure() {
  local scenario=$1 rate=$2 throttle=${3%%=*} run=$4 plan wl_pid="" b_start b_end b_mid d_start d_end d_secs
  local tag="$scenario-$throttle-$run"
  log "$tag: fresh table of $ROWS rows (load $(cut -d' ' -f1 /proc/loadavg))"
  fresh_table "$ROWS"
  sql -c "DROP SEQUENCE IF EXISTS accounts_new_ids" -c "CREATE SEQUENCE accounts_new_ids START 100000001"
  plan=$(plan_file "$tag" "$(throttle_options "$3")")
  "$PHASED" run "$plan" --phase expand --database "$URL" --format json >"$OUT/expand-$tag.ndjson"
  if [ "$rate" != 0 ]; then
    wl_pid=$(start_workload "wl-$tag" "$rate")
    sleep 5 # warm-up: every client connected and past its first transactions
    log "$tag: the window before, ${BASELINE_SECS}s at $rate tx/s"
    b_start=$(now); sleep "$BASELINE_SECS"; b_end=$(now)
  fi
  log "$tag: the backfill${INTERLEAVE:+, paused and resumed every ${INTERLEAVE}s}"
  local w0 w1 disturb_pid
  read -r -a w0 < <(buffer_writes)
  disturb_pid=$(start_disturb)
  d_start=$(now)
  if [ -n "$INTERLEAVE" ]; then
    run_interleaved "$plan" "$OUT/windows-$tag" "$tag" || { cat "$OUT/backfill-$tag.log" >&2; stop_disturb "$disturb_pid"; [ -z "$wl_pid" ] || kill "$wl_pid"; echo "backfill failed ($tag)" >&2; exit 1; }
  else
    /usr/bin/time -f "%U %S" -o "$OUT/cpu-$tag" "$PHASED" run "$plan" --phase backfill --database "$URL" --format json >"$OUT/backfill-$tag.ndjson" \
      2>"$OUT/backfill-$tag.log" || { cat "$OUT/backfill-$tag.log" >&2; stop_disturb "$disturb_pid"; [ -z "$wl_pid" ] || kill "$wl_pid"; echo "backfill failed ($tag)" >&2; exit 1; }
  fi
  d_end=$(now)
  stop_disturb "$disturb_pid"
  read -r -a w1 < <(buffer_writes)
  d_secs=$(echo "$d_end - $d_start" | bc)
  if [ -n "$INTERLEAVE" ]; then
    # Rows/s over the running windows only.
    d_secs=$(awk '$1 == "on" { s += $3 - $2 + 1 } END { printf "%.1f\n", s }' "$OUT/windows-$tag")
  fi
  echo "$d_secs" >"$OUT/secs-$tag"
  local left slowed b=(- - - - - -) d=(- - - - - -) b1=(- - - - - -) b2=(- - - - - -) bs ds a=(- - - - - -) a_start a_end a_secs after_ratio=- ratio=- noise=- exec_ratio=- stalls=- calm_ratio=-
  if [ -n "$wl_pid" ]; then
    # The control: the workload goes on alone for as long as the backfill ran (at most
    # AFTER_SECS), a window as long as the one during, with no backfill in it.
    a_start=$(now)
    a_secs=$(echo "if ($d_secs < $AFTER_SECS) $d_secs else $AFTER_SECS" | bc)
    sleep "$a_secs"; a_end=$(now)
    sleep 3 # pgbench's log buffers: the last second or so is lost when it is stopped
    kill "$wl_pid"; wait "$wl_pid" 2>/dev/null || true
    read -r -a b < <(stats "wl-$tag" "$b_start" "$b_end")
    read -r -a d < <(stats "wl-$tag" "$d_start" "$d_end")
    read -r -a a < <(stats "wl-$tag" "$a_start" "$a_end")
    after_ratio=$(printf "%.2f" "$(echo "${a[2]} / ${b[2]}" | bc -l)")
    # The same ratio between the two halves of the window before, where no backfill ran: how
    # far p99 moves on its own on this machine.
    b_mid=$(echo "($b_start + $b_end) / 2" | bc -l)
    read -r -a b1 < <(stats "wl-$tag" "$b_start" "$b_mid")
    read -r -a b2 < <(stats "wl-$tag" "$b_mid" "$b_end")
    ratio=$(printf "%.2f" "$(echo "${d[2]} / ${b[2]}" | bc -l)")
    noise=$(printf "%.2f" "$(echo "${b2[2]} / ${b1[2]}" | bc -l)")
    exec_ratio=$(printf "%.2f" "$(echo "$(exec_p99 "wl-$tag" "$d_start" "$d_end") / $(exec_p99 "wl-$tag" "$b_start" "$b_end")" | bc -l)")
  fi
  if [ -s "$OUT/io-pressure" ]; then
    stalls=$(io_stall_seconds | awk -v from="$d_start" -v to="$d_end" '$1 >= int(from) && $1 <= to { n++ } END { print n + 0 }')
    if [ -n "$wl_pid" ]; then
      stalls="$(io_stall_seconds | awk -v from="$b_start" -v to="$b_end" '$1 >= int(from) && $1 <= to { n++ } END { print n + 0 }') → $stalls"
      # The p99 ratio again without the seconds the disk stalled (and the second after each),
      # in both windows: what is left when the disk is not in the way.
      io_stall_seconds >"$OUT/stalls"
      read -r -a bs < <(stats "wl-$tag" "$b_start" "$b_end" "$OUT/stalls")
      read -r -a ds < <(stats "wl-$tag" "$d_start" "$d_end" "$OUT/stalls")
      if [ "${bs[0]}" != 0 ] && [ "${ds[0]}" != 0 ]; then
        calm_ratio=$(printf "%.2f" "$(echo "${ds[2]} / ${bs[2]}" | bc -l)")
      fi
    fi
  fi
  if [ -s "$OUT/io-pressure" ]; then
    local db=(- - - - -) dd
    [ -z "$wl_pid" ] || read -r -a db < <(disk_rates "$b_start" "$b_end")
    read -r -a dd < <(disk_rates "$d_start" "$d_end")
    echo "| $tag | ${db[0]} → ${dd[0]} | ${db[1]} → ${dd[1]} | ${db[2]} → ${dd[2]} | ${db[3]} → ${dd[3]} | ${db[4]} → ${dd[4]} | $(awk -v s="$d_secs" '{ printf "%.0f%%", ($1 + $2) / s * 100 }' "$OUT/cpu-$tag") | $(mb $((w1[0] - w0[0]))) / $(mb $((w1[1] - w0[1]))) / $(mb $((w1[2] - w0[2]))) | $((w1[3] - w0[3])) |" >>"$OUT/disk.md"
  fi
  if [ -n "$INTERLEAVE" ] && [ -n "$wl_pid" ]; then
    local on off
    read -r -a on < <(pooled_p99 "wl-$tag" "$OUT/windows-$tag" on)
    read -r -a off < <(pooled_p99 "wl-$tag" "$OUT/windows-$tag" off)
    local son soff
    read -r -a son < <(median_second_p99 "wl-$tag" "$OUT/windows-$tag" on)
    read -r -a soff < <(median_second_p99 "wl-$tag" "$OUT/windows-$tag" off)
    local con=(- -) coff=(- -) calm="-"
    if [ -s "$OUT/io-pressure" ] && [ -e "$OUT/stalls" ]; then
      read -r -a con < <(pooled_p99 "wl-$tag" "$OUT/windows-$tag" on "$OUT/stalls")
      read -r -a coff < <(pooled_p99 "wl-$tag" "$OUT/windows-$tag" off "$OUT/stalls")
      calm="${coff[1]} → ${con[1]} ($(ratio "${con[1]}" "${coff[1]}"))"
    fi
    echo "| $tag | $(grep -c '^on' "$OUT/windows-$tag") × on, $(grep -c '^off' "$OUT/windows-$tag") × off | ${on[0]} / ${off[0]} | ${off[1]} → ${on[1]} | $(ratio "${on[1]}" "${off[1]}") | ${son[0]} / ${soff[0]} | ${soff[1]} → ${son[1]} | $(ratio "${son[1]}" "${soff[1]}") | $calm |" >>"$OUT/interleaved.md"
  fi
  left=$(sql -At -c "SELECT count(*) FROM accounts WHERE email_lower IS DISTINCT FROM lower(email)")
  [ "$left" = 0 ] || { echo "backfill left $left rows wrong ($tag)" >&2; exit 1; }
  slowed=$(grep -c '"trend":"down"' "$OUT/backfill-$tag.ndjson" || true)
  printf "| %s | %s | %s | %.1f | %.0f | @%s | %s → %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s (%s) |\n" \
    "$scenario" "${rate/#0/idle}" "$throttle" "$d_secs" "$(echo "$ROWS / $d_secs" | bc -l)" "$tag" \
    "${b[2]}" "${d[2]}" "$ratio" "$noise" "${d[3]}" "${d[5]}" "${d[4]}" "$slowed" "$exec_ratio" "$stalls" "$calm_ratio" "$after_ratio" "${a[2]}" >>"$OUT/rows.md"
}

if [ -n "$SCENARIOS" ]; then
  : >"$OUT/rows.md"
  : >"$OUT/disk.md"
  : >"$OUT/interleaved.md"
  io_pid=$(start_io_monitor)
  [ -z "$io_pid" ] || trap 'kill "$io_pid" 2>/dev/null || true' EXIT
  for scenario in $SCENARIOS; do
    case "$scenario" in
      light) rate=$RATE ;;
      idle) rate=0 ;;
      heavy)
        if [ -z "$HEAVY_RATE" ]; then
          log "heavy: measuring the workload's capacity (10 s unthrottled)"
          cap=$(capacity)
          HEAVY_RATE=$(( cap / 2 ))
          log "heavy: $HEAVY_RATE tx/s (50% of the capacity, $cap tx/s)"
        fi
        rate=$HEAVY_RATE ;;
      *) echo "unknown scenario $scenario (light, heavy, idle)" >&2; exit 2 ;;
    esac
    IFS=';' read -r -a throttles <<<"$THROTTLES"
    for run in $(seq "$RUNS"); do
      for throttle in "${throttles[@]}"; do
        throttle=$(echo "$throttle" | sed 's/^ *//; s/ *$//')
        measure "$scenario" "$rate" "$throttle" "$run"
      done
    done
  done
  echo
  echo "Workload: pgbench -R RATE -c $CLIENTS, 50% point reads, 30% point updates, 20% inserts, on $ROWS rows with the dual_write trigger; latency counted from the scheduled start; windows: ${BASELINE_SECS}s before, and the backfill's own. Load average now $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "| scenario | tx/s | throttle | backfill (s) | rows/s | speed ÷ unthrottled | p99 before → during (ms) | p99 × | p99 × with no backfill (2nd ÷ 1st half before) | max during (ms) | > 100 ms during | failed during | pace slowdowns | execution p99 × (without pgbench's schedule lag) | disk stall seconds before → during | p99 × outside them | p99 × after, no backfill (ms) |"
  echo "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  # The speed column: this run's wall time against the unthrottled run of the same scenario
  # and round.
  : >"$OUT/summary.tsv"
  while IFS= read -r row; do
    tag=$(echo "$row" | sed 's/.*| @\([^ |]*\) |.*/\1/')
    scenario=${tag%%-*}; run=${tag##*-}
    if [ -f "$OUT/secs-$scenario-unthrottled-$run" ]; then
      ratio=$(printf "%.2f" "$(echo "$(cat "$OUT/secs-$scenario-unthrottled-$run") / $(cat "$OUT/secs-$tag")" | bc -l)")
    else
      ratio=-
    fi
    echo "${row/@$tag/$ratio}"
    echo "${row/@$tag/$ratio}" | awk -F'|' -v OFS='\t' '{ gsub(/ /, ""); print $2, $4, $7, $9, $10, $11, $12 }' >>"$OUT/summary.tsv"
  done <"$OUT/rows.md"
  if [ -s "$OUT/disk.md" ]; then
    echo
    echo "The data disk ($(data_disk)), in the window before → during the backfill: what the backfill adds to the disk's work; and the CPU phased's own process used (user + system, of one core) while it ran."
    echo
    echo "| run | writes/s | MB/s written | flushes/s | ms a write | ms a flush | phased's CPU | buffers written during by backends / the background writer / the checkpointer (MB) | checkpoints during |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    cat "$OUT/disk.md"
  fi
  if [ -s "$OUT/interleaved.md" ]; then
    echo
    echo "Interleaved (INTERLEAVE=${INTERLEAVE}s): the workload's p99 while paused → while the backfill ran, windows of the same run taking turns; pooled over all their transactions, the median over their whole seconds of each second's p99, and pooled again without the seconds the disk stalled (and the second after each)."
    echo
    echo "| run | windows | transactions running / paused | p99 paused → running (ms) | p99 × | seconds running / paused | median second's p99 paused → running (ms) | × | pooled outside the disk's stalled seconds (ms, ×) |"
    echo "|---|---|---:|---|---:|---:|---|---:|---:|"
    cat "$OUT/interleaved.md"
  fi
  if [ "$RUNS" -gt 1 ]; then
    echo
    echo "Over the $RUNS runs of each: median (min–max; of an even count, the lower middle)."
    echo
    echo "| scenario | throttle | speed ÷ unthrottled | p99 × | p99 × with no backfill | max during (ms), worst | > 100 ms, all runs |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    cut -f1,2 "$OUT/summary.tsv" | awk '!seen[$0]++' | while IFS=$'\t' read -r scenario throttle; do
      pick() { awk -F'\t' -v s="$scenario" -v t="$throttle" -v c="$1" '$1 == s && $2 == t && $c != "-" { print $c }' "$OUT/summary.tsv"; }
      both() { if [ -n "$(pick "$1")" ]; then echo "$(pick "$1" | median) ($(pick "$1" | range))"; else echo -; fi; }
      worst=$(pick 6 | sort -g | tail -1); over=$(pick 7 | awk '{ n += $1 } END { print n + 0 }')
      echo "| $scenario | $throttle | $(both 3) | $(both 4) | $(both 5) | ${worst:--} | $over |"
    done
  fi
fi

# `phased pause` on a running auto backfill: the time from the pause (its `set_at`) to the last
# batch committed (the step's `updated_at`), and `resume` carrying it to the end.
if [ "$PAUSE_CHECK" = 1 ]; then
  log "pause check: an auto backfill, paused once it has written rows"
  fresh_table "$ROWS"
  plan=$(plan_file pause "")
  "$PHASED" run "$plan" --phase expand --database "$URL" --format json >"$OUT/expand-pause.ndjson"
  "$PHASED" run "$plan" --phase backfill --database "$URL" --format json >"$OUT/backfill-pause.ndjson" &
  run_pid=$!
  until [ "$(sql -At -c "SELECT coalesce(max(rows_done), 0) > 0 FROM phased.steps WHERE plan = 'bench-pause'" 2>/dev/null)" = t ]; do sleep 0.05; done
  "$PHASED" pause "$plan" --database "$URL" >/dev/null
  sleep 3 # time for any batch to (wrongly) commit after the pause
  read -r done_paused stop_ms < <(sql -At -F ' ' -c "SELECT s.rows_done, round(extract(epoch FROM s.updated_at - c.set_at) * 1000) FROM phased.steps s, phased.backfill_control c WHERE s.plan = 'bench-pause' AND s.kind = 'backfill' AND c.plan = 'bench-pause'")
  sleep 1
  done_later=$(sql -At -c "SELECT rows_done FROM phased.steps WHERE plan = 'bench-pause' AND kind = 'backfill'")
  "$PHASED" resume "$plan" --database "$URL" >/dev/null
  wait "$run_pid"
  left=$(sql -At -c "SELECT count(*) FROM accounts WHERE email_lower IS DISTINCT FROM lower(email)")
  echo
  echo "Pause: the last batch committed ${stop_ms} ms after \`phased pause\` (negative: before it); rows written while paused: $(( done_later - done_paused )); after \`resume\`: the backfill finished, rows left wrong: $left."
fi
