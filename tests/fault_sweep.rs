//! The fault sweep that stays in the suite (docs/reliability.md describes the full campaign,
//! `scripts/fault-sweep` runs it). One plan exercising every kind of unit — a table, a `sql`
//! step, a column, a dual-write trigger, an index (built `CONCURRENTLY` on PostgreSQL), a
//! batched backfill, a flag, a verified backup and a contract — is hit by faults on a fresh
//! database per point:
//!
//! - `run`, `rollback` and `restore` killed with kill -9, some a few milliseconds after an NDJSON
//!   event they print, some at a random time within their uninterrupted duration;
//! - (PostgreSQL) the step's session, or the session holding the lease, terminated with
//!   `pg_terminate_backend` after an event;
//! - two runners released at the same instant: exactly one works, the other exits 4 naming the
//!   holder (or, when it only got going after the first had finished, finds nothing to do).
//!
//! After each fault the command is run again to completion, and the end state — the user schema,
//! a checksum of the data, the flags and every step's status — must be the one an uninterrupted
//! run leaves. Each target prints a table: points, converged, failed, per scenario.
//!
//! The suite runs about ten points per target; `PHASED_SWEEP_POINTS=N` runs about N per target
//! (`scripts/fault-sweep N`), `PHASED_SWEEP_SEED` fixes the random times.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::{pg, scratch_dir, TestDb};
use crate::contention::{command, Proc, StartLine};

const PLAN: &str = r#"
plan: sweep
defaults:
  retry: { attempts: 10, backoff: 50ms, max_backoff: 500ms }
backup: { before: [contract], dir: backups }
phases:
  - name: setup
    kind: expand
    steps:
      - create_table: { name: accounts, columns: [ { name: id, type: bigint, primary_key: true }, { name: email, type: text, nullable: false } ] }
      - sql: { up: "INSERT INTO accounts (id, email) SELECT i, 'User' || i || '@Example.COM' FROM generate_series(1, 3000) i", down: "DELETE FROM accounts" }
  - name: expand
    kind: expand
    steps:
      - add_column: { table: accounts, name: email_lower, type: text }
      - dual_write: { table: accounts, set: { email_lower: "lower(NEW.email)" } }
      - create_index: { table: accounts, name: accounts_email_lower_idx, columns: [email_lower] }
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: accounts, set: { email_lower: "lower(email)" }, where: "email_lower IS NULL", batch_size: 250, pause: 0s }
  - name: switch
    kind: switch-flag
    steps:
      - flag: { name: read_email_lower, value: true }
  - name: contract
    kind: contract
    steps:
      - drop_dual_write: { table: accounts }
      - set_not_null: { table: accounts, column: email_lower }
"#;

/// The plan for a target: SQLite has no generate_series; a recursive CTE does the same.
fn plan_for(db: &TestDb) -> String {
    if db.is_pg() {
        PLAN.to_string()
    } else {
        PLAN.replace(
            "SELECT i, 'User' || i || '@Example.COM' FROM generate_series(1, 3000) i",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) SELECT i, 'User' || i || '@Example.COM' FROM n",
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// `run` killed a few milliseconds after an event.
    RunEvent,
    /// `run` killed at a random time.
    RunRandom,
    /// `rollback` (of a run up to the switch) killed a few milliseconds after an event.
    RollbackEvent,
    /// `rollback` killed at a random time.
    RollbackRandom,
    /// `restore` of the backup taken before the contract, killed at a random time (it prints
    /// its events only when it is done, so there are no events to kill it after).
    RestoreRandom,
    /// PostgreSQL: the step's session terminated after an event of `run`.
    TerminateStep,
    /// PostgreSQL: the session holding the lease terminated after an event of `run`.
    TerminateLease,
    /// Two runners released at the same instant.
    TwoRunners,
}

use Scenario::*;

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            RunEvent => "run, kill -9 after event",
            RunRandom => "run, kill -9 at random",
            RollbackEvent => "rollback, kill -9 after event",
            RollbackRandom => "rollback, kill -9 at random",
            RestoreRandom => "restore, kill -9 at random",
            TerminateStep => "run, step session terminated",
            TerminateLease => "run, lease session terminated",
            TwoRunners => "two runners at once",
        }
    }

    /// (points in the suite, share of PHASED_SWEEP_POINTS in percent) on a target.
    fn points(self, postgres: bool) -> (usize, usize) {
        match (self, postgres) {
            (RunEvent, true) => (3, 25),
            (RunEvent, false) => (3, 30),
            (RunRandom, true) => (2, 15),
            (RunRandom, false) => (2, 20),
            (RollbackEvent, _) => (1, 10),
            (RollbackRandom, _) => (1, 10),
            (RestoreRandom, true) => (1, 10),
            (RestoreRandom, false) => (1, 15),
            (TerminateStep, true) => (1, 10),
            (TerminateLease, true) => (1, 10),
            (TerminateStep | TerminateLease, false) => (0, 0),
            (TwoRunners, true) => (1, 10),
            (TwoRunners, false) => (1, 15),
        }
    }
}

const SCENARIOS: [Scenario; 8] = [
    RunEvent,
    RunRandom,
    RollbackEvent,
    RollbackRandom,
    RestoreRandom,
    TerminateStep,
    TerminateLease,
    TwoRunners,
];

/// A point's plan file, in a scratch folder of its own (its backups go beside it).
fn plan_file(db: &TestDb) -> PathBuf {
    let plan = scratch_dir().join("plan.yaml");
    std::fs::write(&plan, plan_for(db)).expect("write plan");
    plan
}

fn phased() -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("phased"));
    cmd.env_remove("DATABASE_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// The arguments of a command of the sweep: `run`, `run --until switch`, `rollback`, `restore`.
fn args(what: &str, plan: &Path, db: &TestDb, backup: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = match what {
        "run" => vec!["run".into(), plan.display().to_string()],
        "run-until-switch" => vec![
            "run".into(),
            plan.display().to_string(),
            "--until".into(),
            "switch".into(),
        ],
        "rollback" => vec![
            "rollback".into(),
            plan.display().to_string(),
            "--yes".into(),
        ],
        "restore" => vec![
            "restore".into(),
            backup.expect("a backup to restore").display().to_string(),
            "--yes".into(),
        ],
        other => panic!("unknown sweep command {other}"),
    };
    args.extend([
        "--database".into(),
        db.url(),
        "--format".into(),
        "json".into(),
    ]);
    args
}

fn output(args: &[String]) -> Output {
    phased().args(args).output().expect("start phased")
}

/// Runs a command until it succeeds: a kill can leave a lease to be taken over or a step to
/// retry, so a few attempts. Err with the last output when it does not.
fn to_completion(args: &[String]) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..4 {
        let out = output(args);
        if out.status.success() {
            return Ok(());
        }
        last = format!(
            "`phased {}` exited {:?}: {}",
            args[0],
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Err(last)
}

/// The backup the full run took before the contract.
fn backup_of(plan: &Path, db: &TestDb) -> Result<PathBuf, String> {
    let out = output(&[
        "backups".into(),
        plan.display().to_string(),
        "--database".into(),
        db.url(),
        "--format".into(),
        "json".into(),
    ]);
    let listed: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("phased backups: {e}"))?;
    listed
        .get(0)
        .and_then(|b| b["path"].as_str())
        .map(PathBuf::from)
        .ok_or_else(|| format!("no backup recorded: {listed}"))
}

/// What a finished command leaves: the user schema, a checksum of the rows, the flags, and
/// every step's status.
#[derive(Debug, PartialEq)]
struct EndState {
    schema: Vec<String>,
    data: String,
    flags: Vec<String>,
    steps: Vec<String>,
}

async fn rows(db: &TestDb, sql: &str) -> Option<Vec<String>> {
    match db {
        TestDb::Pg(p) => p.client().await.query(sql, &[]).await.ok().map(|rows| {
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<_, Option<String>>(i).unwrap_or_else(|| "∅".into()))
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect()
        }),
        TestDb::Sqlite(s) => {
            let conn = s.conn();
            let mut stmt = conn.prepare(sql).ok()?;
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    (0..n)
                        .map(|i| {
                            r.get::<_, Option<String>>(i)
                                .map(|v| v.unwrap_or_else(|| "∅".into()))
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(|v| v.join("|"))
                })
                .ok()?
                .collect::<Result<Vec<_>, _>>()
                .ok();
            rows
        }
    }
}

async fn end_state(db: &TestDb) -> EndState {
    let mut target = db.target("sweep").await;
    let schema =
        phased::with_target!(&mut target, t => t.schema_snapshot().await).expect("schema snapshot");
    let steps = phased::with_target!(&mut target, t => t.load_steps("sweep").await)
        .expect("steps")
        .into_iter()
        .map(|r| format!("{}#{} {}", r.phase, r.index + 1, r.status.as_str()))
        .collect();
    drop(target);
    let data = match rows(
        db,
        "SELECT CAST(id AS text), email, email_lower FROM accounts ORDER BY id",
    )
    .await
    {
        Some(rows) => format!(
            "{} rows, sha256 {:x}",
            rows.len(),
            Sha256::digest(rows.join("\n").as_bytes())
        ),
        None => "no table accounts".to_string(),
    };
    let flags_table = if db.is_pg() {
        "phased.flags"
    } else {
        "phased_flags"
    };
    let flags = rows(
        db,
        &format!("SELECT name, CAST(value AS text) FROM {flags_table} ORDER BY name"),
    )
    .await
    .unwrap_or_default();
    EndState {
        schema,
        data,
        flags,
        steps,
    }
}

/// A command's uninterrupted run: how many events it printed and how long it took.
struct Reference {
    state: EndState,
    events: usize,
    took: Duration,
}

/// Runs `what` on a fresh database prepared by `before` (commands run to completion first).
async fn reference(db: &TestDb, before: &[&str], what: &str) -> Reference {
    let plan = plan_file(db);
    for b in before {
        to_completion(&args(b, &plan, db, None)).expect("the reference's preparation");
    }
    let backup = (what == "restore").then(|| backup_of(&plan, db).expect("the backup"));
    let started = Instant::now();
    let out = output(&args(what, &plan, db, backup.as_deref()));
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "the uninterrupted `{what}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Reference {
        state: end_state(db).await,
        events: String::from_utf8_lossy(&out.stdout).lines().count(),
        took,
    }
}

/// A small deterministic generator for the random kill times (xorshift64*).
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Starts a command with its NDJSON events read line by line.
fn spawn_reading(args: &[String]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = phased()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start phased");
    let stdout = child.stdout.take().expect("stdout");
    let (send, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

/// Waits until the command printed event number `at` (counting from 0) or ended.
fn wait_for_event(lines: &std::sync::mpsc::Receiver<String>, at: usize) {
    for _ in 0..=at {
        if lines.recv().is_err() {
            return;
        }
    }
}

/// kill -9, `delay` after event number `at`. The delay is the fault's own timing, not a wait
/// for a condition: 0, 20 or 150 ms move the kill from the event's statement into the next.
fn kill_after_event(args: &[String], at: usize, delay: Duration) {
    let (mut child, lines) = spawn_reading(args);
    wait_for_event(&lines, at);
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
}

/// kill -9 at a time within the command's uninterrupted duration.
fn kill_at(args: &[String], at: Duration) {
    let mut child = phased()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start phased");
    std::thread::sleep(at);
    let _ = child.kill();
    let _ = child.wait();
}

/// Terminates phased's sessions on the test database after event number `at` of `run`: the
/// one holding the plan's advisory lock (the lease), or the others of the plan (the step's; the
/// sessions watching an index build are left alone). Says how many, and how the runner ended.
async fn terminate_after_event(
    db: &TestDb,
    args: &[String],
    at: usize,
    lease: bool,
) -> Result<String, String> {
    let (mut child, lines) = spawn_reading(args);
    wait_for_event(&lines, at);
    let holders = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let sql = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'phased/sweep' \
         AND pid {} ({holders})",
        if lease { "IN" } else { "NOT IN" }
    );
    let client = pg(db).client().await;
    let terminated: i64 = client
        .query_one(&sql, &[])
        .await
        .expect("pg_terminate_backend")
        .get(0);
    // The runner carries on (a new step session), or stops (exit 4: its lease is gone); either
    // way it ends, or the point fails.
    loop {
        match lines.recv_timeout(PATIENCE) {
            Ok(_) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the runner whose session was terminated did not end within {PATIENCE:?}"
                ));
            }
        }
    }
    let code = child.wait().map(|s| s.code()).unwrap_or(None);
    Ok(format!(
        "{terminated} session(s) terminated, the runner exited {}",
        code.map_or("on a signal".to_string(), |c| c.to_string())
    ))
}

/// How long a runner may take to end once its session was terminated.
const PATIENCE: Duration = Duration::from_secs(180);

/// Two runners released at the same instant. Exactly one may work; the other exits 4 naming
/// the holder, or — when it only got going after the first had finished — finds every step
/// done. Returns whether they overlapped (the second exited 4), or what went wrong.
fn two_runners(args: &[String]) -> Result<bool, String> {
    let start = StartLine::new();
    let procs: Vec<Proc> = (0..2)
        .map(|_| Proc::spawn(command(args, Some(&start))))
        .collect();
    start.release();
    let ends: Vec<(Option<i32>, String)> = procs.into_iter().map(Proc::finish).collect();
    let worked = |text: &str| text.contains("\"event\":\"step_start\"");
    let working = ends.iter().filter(|(_, text)| worked(text)).count();
    if working != 1 {
        return Err(format!("{working} runners worked:\n{ends:#?}"));
    }
    let mut overlapped = false;
    for (code, text) in &ends {
        match code {
            Some(0) => {}
            Some(4)
                if text.contains("another runner is working on plan") && text.contains("pid") =>
            {
                overlapped = true
            }
            _ => return Err(format!("a runner exited {code:?}:\n{text}")),
        }
    }
    Ok(overlapped)
}

/// One point: a fresh database, the fault, the command again to completion, the comparison.
async fn point(
    db: &TestDb,
    scenario: Scenario,
    n: usize,
    of: usize,
    refs: &References,
    random: &mut Random,
) -> Result<String, String> {
    let plan = plan_file(db);
    let spread = |events: usize| {
        if of < 2 {
            events / 2
        } else {
            n * (events - 1) / (of - 1)
        }
    };
    let delay = Duration::from_millis([0, 20, 150][n % 3]);
    let (done, reference, what) = match scenario {
        RunEvent => {
            let at = spread(refs.run.events);
            kill_after_event(&args("run", &plan, db, None), at, delay);
            ("run", &refs.run, format!("after event {at} + {delay:?}"))
        }
        RunRandom => {
            let at = Duration::from_millis(random.below(refs.run.took.as_millis() as u64));
            kill_at(&args("run", &plan, db, None), at);
            ("run", &refs.run, format!("at {at:?}"))
        }
        RollbackEvent | RollbackRandom => {
            to_completion(&args("run-until-switch", &plan, db, None))?;
            let rollback = args("rollback", &plan, db, None);
            let what = if scenario == RollbackEvent {
                let at = spread(refs.rollback.events);
                kill_after_event(&rollback, at, delay);
                format!("after event {at} + {delay:?}")
            } else {
                let at = Duration::from_millis(random.below(refs.rollback.took.as_millis() as u64));
                kill_at(&rollback, at);
                format!("at {at:?}")
            };
            ("rollback", &refs.rollback, what)
        }
        RestoreRandom => {
            to_completion(&args("run", &plan, db, None))?;
            let backup = backup_of(&plan, db)?;
            let at = Duration::from_millis(random.below(refs.restore.took.as_millis() as u64));
            let restore = args("restore", &plan, db, Some(&backup));
            kill_at(&restore, at);
            to_completion(&restore)?;
            let state = end_state(db).await;
            return compare(&state, &refs.restore.state).map(|()| format!("at {at:?}"));
        }
        TerminateStep | TerminateLease => {
            let at = spread(refs.run.events);
            let ended = terminate_after_event(
                db,
                &args("run", &plan, db, None),
                at,
                scenario == TerminateLease,
            )
            .await?;
            ("run", &refs.run, format!("after event {at}: {ended}"))
        }
        TwoRunners => {
            let overlapped = two_runners(&args("run", &plan, db, None))?;
            let state = end_state(db).await;
            return compare(&state, &refs.run.state).map(|()| {
                if overlapped {
                    "the second exited 4 naming the holder".to_string()
                } else {
                    "the second started after the first had finished".to_string()
                }
            });
        }
    };
    to_completion(&args(done, &plan, db, None))?;
    let state = end_state(db).await;
    compare(&state, &reference.state).map(|()| what)
}

fn compare(state: &EndState, reference: &EndState) -> Result<(), String> {
    if state == reference {
        Ok(())
    } else {
        Err(format!(
            "the end state differs from an uninterrupted run's:\n{state:#?}\nexpected:\n{reference:#?}"
        ))
    }
}

struct References {
    run: Reference,
    rollback: Reference,
    restore: Reference,
}

async fn sweep(make: impl AsyncFn() -> TestDb) {
    let first = make().await;
    let postgres = first.is_pg();
    let dialect = if postgres { "postgres" } else { "sqlite" };
    let run = reference(&first, &[], "run").await;
    assert_eq!(run.state.steps.len(), 9, "{:?}", run.state.steps);
    assert!(
        run.state.data.starts_with("3000 rows"),
        "{}",
        run.state.data
    );
    let refs = References {
        run,
        rollback: reference(&make().await, &["run-until-switch"], "rollback").await,
        restore: reference(&make().await, &["run"], "restore").await,
    };
    let wanted: Option<usize> = std::env::var("PHASED_SWEEP_POINTS")
        .ok()
        .and_then(|n| n.parse().ok());
    let seed: u64 = std::env::var("PHASED_SWEEP_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x5eed_f00d);
    let mut random = Random(seed.max(1));
    eprintln!("fault-sweep {dialect}: seed {seed}");
    let mut table = Vec::new();
    let mut failures = Vec::new();
    for scenario in SCENARIOS {
        let (suite, share) = scenario.points(postgres);
        let count = match wanted {
            Some(n) if share > 0 => (n * share).div_ceil(100).max(1),
            Some(_) => 0,
            None => suite,
        };
        let mut converged = 0;
        for n in 0..count {
            let db = make().await;
            match point(&db, scenario, n, count, &refs, &mut random).await {
                Ok(what) => {
                    converged += 1;
                    eprintln!(
                        "fault-sweep {dialect} {}: point {}/{count} {what}: converged",
                        scenario.name(),
                        n + 1
                    );
                }
                Err(why) => {
                    eprintln!(
                        "fault-sweep {dialect} {}: point {}/{count} FAILED: {why}",
                        scenario.name(),
                        n + 1
                    );
                    failures.push(format!("{} point {}: {why}", scenario.name(), n + 1));
                }
            }
        }
        if count > 0 {
            table.push((scenario.name(), count, converged));
        }
    }
    for (name, count, converged) in &table {
        // One line per scenario, read by scripts/fault-sweep for its table.
        eprintln!(
            "fault-sweep-row|{dialect}|{name}|{count}|{converged}|{}",
            count - converged
        );
    }
    assert!(
        failures.is_empty(),
        "{} point(s) did not converge:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_converges_to_an_uninterrupted_run_on_postgres() {
    sweep(async || TestDb::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_converges_to_an_uninterrupted_run_on_sqlite() {
    sweep(async || TestDb::sqlite()).await;
}
