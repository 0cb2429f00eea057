# Shared by the bench scripts (sourced, not run): timing, medians, and the speed table of
# "plain UPDATE vs unthrottled backfill" by table size. Expects $OUT and $REPEATS.

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
now() { date +%s.%N; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# $1 ÷ $2 to two places, or - when either is not a number above zero.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'; }
range() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f–%.2f", lo, hi }'; }

speed_table_header() {
  echo "Each size: $REPEATS runs of each, alternating, on a fresh table each time; median (min–max)."
  echo
  echo "| rows | plain UPDATE (s) | UPDATE rows/s | backfill (s) | backfill rows/s | backfill ÷ UPDATE speed | backfill µs/row | peak RSS of phased (MB) |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
}

# Empties size $1's sample files: $OUT/upd-$1 (UPDATE seconds), bf-$1 (backfill seconds),
# rss-$1 (phased's peak RSS, kB), one line per run.
speed_samples_reset() { : >"$OUT/upd-$1"; : >"$OUT/bf-$1"; : >"$OUT/rss-$1"; }

# The table row of size $1 from its sample files.
speed_table_row() {
  local n=$1 upd bf rss
  upd=$(median <"$OUT/upd-$n"); bf=$(median <"$OUT/bf-$n"); rss=$(sort -g "$OUT/rss-$n" | tail -1)
  printf "| %d | %.2f (%s) | %.0f | %.2f (%s) | %.0f | %.2f | %.2f | %.1f |\n" "$n" "$upd" "$(range <"$OUT/upd-$n")" \
    "$(echo "$n / $upd" | bc -l)" "$bf" "$(range <"$OUT/bf-$n")" "$(echo "$n / $bf" | bc -l)" \
    "$(echo "$upd / $bf" | bc -l)" "$(echo "$bf * 1000000 / $n" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
}
