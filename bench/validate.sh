#!/usr/bin/env bash
# `phased validate` on 100 plans, each with SQL to lint. Not a test: it measures, it does not
# assert (issue 16: validate on 100 plans stays under a second).
#
#   100 plans in one `phased validate` invocation, as a CI job checks a repository's plans:
#   the shipped plans/quickstart.yaml and plans/migrations.yaml (whose `migrations` steps lint
#   the five revisions of migrations/ in their phases), and plans with `sql` steps of several
#   statements each (indexes, constraints, a function body, suppression comments) in every phase
#   kind, plus `add_column` steps whose type and default are checked. Wall-clock time of the
#   whole process and its peak RSS, REPEATS runs, median (min–max).
#
# Usage:  cargo build --release && bench/validate.sh
# Env:    PHASED (the binary), PLANS (100), REPEATS (5), OUT (bench/out-validate)
# Prints a markdown table on stdout.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
PHASED="${PHASED:-$PWD/target/release/phased}"
PLANS="${PLANS:-100}"
REPEATS="${REPEATS:-5}"
OUT="${OUT:-$PWD/bench/out-validate}"

[ -x "$PHASED" ] || { echo "build first: cargo build --release ($PHASED missing)" >&2; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT/plans"
cp -r migrations "$OUT/migrations"

# Plan $1 of the set: a third are the shipped plans, the rest carry `sql` steps to lint.
write_plan() {
  local i=$1 file="$OUT/plans/plan-$(printf %03d "$1").yaml"
  case $((i % 3)) in
    0) sed "s/^plan: quickstart/plan: quickstart-$i/" plans/quickstart.yaml >"$file" ;;
    1) sed "s/^plan: shop-migrations/plan: shop-migrations-$i/" plans/migrations.yaml >"$file" ;;
    2) cat >"$file" <<YAML
plan: lint-$i
phases:
  - name: expand
    kind: expand
    steps:
      - add_column: { table: accounts_$i, name: note, type: text, default: "''" }
      - sql:
          up: |
            CREATE TABLE audit_$i (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), body text);
            ALTER TABLE accounts_$i ADD CONSTRAINT accounts_${i}_email_check CHECK (email <> '') NOT VALID;
            CREATE OR REPLACE FUNCTION touch_$i() RETURNS trigger LANGUAGE plpgsql AS \$\$
            BEGIN
              NEW.updated_at := now(); -- ; DROP TABLE x; inside a body is not a statement
              RETURN NEW;
            END
            \$\$;
            CREATE TRIGGER touch_$i BEFORE UPDATE ON accounts_$i FOR EACH ROW EXECUTE FUNCTION touch_$i();
          down: |
            DROP TRIGGER touch_$i ON accounts_$i;
            DROP FUNCTION touch_$i();
            DROP TABLE audit_$i;
          allow: [ban-drop-table]
      - sql:
          up: |
            CREATE INDEX CONCURRENTLY IF NOT EXISTS accounts_${i}_email_idx ON accounts_$i (email);
            -- phased: allow require-concurrent-index-creation — audit_$i is new and empty
            CREATE INDEX audit_${i}_at_idx ON audit_$i (at);
          down: DROP INDEX CONCURRENTLY IF EXISTS accounts_${i}_email_idx
          transactional: false
  - name: migrate
    kind: migrate
    steps:
      - sql: { up: "UPDATE accounts_$i SET note = 'none' WHERE note IS NULL AND id < 1000", down: "SELECT 1" }
  - name: contract
    kind: contract
    steps:
      - sql:
          up: |
            ALTER TABLE accounts_$i VALIDATE CONSTRAINT accounts_${i}_email_check;
            ALTER TABLE accounts_$i DROP COLUMN legacy;
          down: SELECT 1
YAML
    ;;
  esac
}
for i in $(seq 1 "$PLANS"); do write_plan "$i"; done

# One check that the set is what it claims: every plan valid (exit 0).
"$PHASED" validate "$OUT"/plans/*.yaml >"$OUT/validate.out" 2>"$OUT/validate.err" || {
  echo "phased validate failed on the generated plans; see $OUT/validate.err" >&2; exit 1; }

log "validate $PLANS plans, $REPEATS runs"
: >"$OUT/secs"; : >"$OUT/rss"; : >"$OUT/cpu"
for _ in $(seq 1 "$REPEATS"); do
  start=$(now)
  /usr/bin/time -f "%M %U %S" -o "$OUT/time-one" "$PHASED" validate "$OUT"/plans/*.yaml >/dev/null 2>&1
  echo "$(now) - $start" | bc -l >>"$OUT/secs"
  read -r rss user sys <"$OUT/time-one"
  echo "$rss" >>"$OUT/rss"
  echo "$user + $sys" | bc -l >>"$OUT/cpu"
done

echo "$(nproc) cores; load average at start $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC'); $("$PHASED" --version)"
echo
echo "| plans | lines of plan YAML | SQL files linted per run | phased validate wall (s), median (min–max) | CPU user+sys (s), median | wall per plan (ms) | peak RSS (MB) |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
secs=$(median <"$OUT/secs")
printf "| %d | %d | %d | %.3f (%s) | %.3f | %.1f | %.1f |\n" "$PLANS" "$(cat "$OUT"/plans/*.yaml | wc -l)" \
  "$(( (PLANS + 2) / 3 * 5 ))" "$secs" "$(range <"$OUT/secs")" "$(median <"$OUT/cpu")" \
  "$(echo "$secs * 1000 / $PLANS" | bc -l)" "$(echo "$(sort -g "$OUT/rss" | tail -1) / 1024" | bc -l)"
