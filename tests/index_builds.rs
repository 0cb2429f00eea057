//! Concurrent index builds against real sessions: a build outlasts old transactions (in any
//! table) instead of failing on `lock_timeout`, names them, and finishes when they end; a lock
//! held on the table itself still times out and is retried; `index_wait_timeout` ends the wait
//! with the old transaction named and nothing INVALID left; a failed or interrupted build drops
//! what it left; progress events and `phased status` follow the build through its phases.
//!
//! Every wait here is for a condition PostgreSQL reports (`pg_stat_activity`, `pg_locks`,
//! `pg_stat_progress_create_index`) or for an event phased printed, never for a length of time.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phased::engine::{EngineError, Event, RunOptions};
use serde_json::Value;
use tokio_postgres::Client;

use crate::common::{self, backend_pid, pg, pg_capture::PgCapture, plan, run, PgDb, TestDb};

/// The longest any condition may take before the test gives up (a safety net, not a timing).
const PATIENCE: Duration = Duration::from_secs(90);

/// `big` (id, v) with `rows` rows, and `other_table`, which the old transactions read.
async fn tables(db: &TestDb, rows: u32) {
    db.execute(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, v integer NOT NULL);
         INSERT INTO big SELECT g, g % 1000 FROM generate_series(1, {rows}) g;
         CREATE TABLE other_table (id integer PRIMARY KEY);
         INSERT INTO other_table SELECT generate_series(1, 10);
         ANALYZE big;"
    ))
    .await;
}

/// An ordinary long read, the shape of any report: it holds a snapshot (and, with
/// `other_table`, no lock on `big`) until committed.
async fn old_transaction(db: &PgDb, read: &str) -> (Client, i32) {
    let client = db.client().await;
    let pid = backend_pid(&client).await;
    // One statement per message, so that pg_stat_activity shows the read as its last query.
    for sql in [
        "SET application_name = 'report'",
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
        read,
    ] {
        client
            .batch_execute(sql)
            .await
            .expect("open the old transaction");
    }
    (client, pid)
}

/// The validity of each index named `name` (empty: there is none).
async fn validity(client: &Client, name: &str) -> Vec<bool> {
    client
        .query(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1",
            &[&name],
        )
        .await
        .expect("pg_index")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The build's backend is waiting for `pid` (a virtual-transaction lock, not a table lock) and
/// has been for longer than `secs` seconds, by the server's clock.
fn build_waits_for(pid: i32, secs: u32) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted \
         WHERE a.datname = current_database() AND a.query LIKE 'CREATE%INDEX CONCURRENTLY%' \
         AND l.locktype = 'virtualxid' AND {pid} = ANY (pg_blocking_pids(a.pid)) \
         AND clock_timestamp() - l.waitstart > interval '{secs} seconds')"
    )
}

fn build_in_phase(phase: &str) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p \
         JOIN pg_stat_activity a ON a.pid = p.pid \
         WHERE a.datname = current_database() AND p.phase = '{phase}')"
    )
}

/// `phased` running in the background, its NDJSON events and its stderr collected as they come.
struct Background {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Background {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("phased"))
            .args(args)
            .env_remove("DATABASE_URL")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start phased");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            let lines = Arc::clone(&stdout);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().expect("stdout lines").push(line);
                }
            });
        }
        if let Some(mut err) = child.stderr.take() {
            let text = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    text.lock()
                        .expect("stderr text")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn events(&self) -> Vec<Value> {
        self.stdout
            .lock()
            .expect("stdout lines")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr text").clone()
    }

    /// Panics with what phased said if it has exited.
    fn still_running(&mut self, waiting_for: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            // Let the reader threads drain the pipes.
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "phased exited ({status}) before {waiting_for}\nstderr:\n{}\nevents:\n{:#?}",
                self.stderr(),
                self.events()
            );
        }
    }

    /// Waits until `sql` (one boolean) holds, while phased runs.
    async fn wait_until(&mut self, client: &Client, sql: &str) {
        let start = Instant::now();
        loop {
            self.still_running(sql);
            let ok: Option<bool> = client
                .query_opt(sql, &[])
                .await
                .ok()
                .flatten()
                .and_then(|r| r.get(0));
            if ok == Some(true) {
                return;
            }
            assert!(start.elapsed() < PATIENCE, "timed out waiting for: {sql}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until phased has printed an event that `pred` accepts.
    async fn wait_for_event(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            self.still_running(what);
            assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for phased to exit; its exit code (None: ended by a signal).
    async fn exit_code(&mut self) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The reader threads stop at the end of the pipes.
                let drained = Instant::now();
                while drained.elapsed() < Duration::from_secs(5)
                    && (Arc::strong_count(&self.stdout) > 1 || Arc::strong_count(&self.stderr) > 1)
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                return status.code();
            }
            assert!(start.elapsed() < PATIENCE, "phased did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_plan(dir: &tempfile::TempDir, yaml: &str) -> String {
    let path = dir.path().join("plan.yaml");
    std::fs::write(&path, yaml).expect("write plan");
    path.display().to_string()
}

fn index_progress(e: &Value) -> Option<&Value> {
    (e["event"] == "index_progress").then(|| &e["progress"])
}

fn waits_for_pid(progress: &Value, pid: i32) -> bool {
    progress["waiting_for"]
        .as_array()
        .is_some_and(|w| w.iter().any(|s| s["pid"] == pid))
}

const REPRO_PLAN: &str = "plan: repro
backup: { before: [] }
defaults:
  lock_timeout: 2s
  retry: { attempts: 3, backoff: 250ms, max_backoff: 1s }
phases:
  - name: expand
    kind: expand
    steps:
      - create_index: { table: big, name: big_v_idx, columns: [v] }
";

/// The reproduction: an ordinary long read on another table made the build fail on
/// its 2s lock_timeout after scanning the table, three times, and leave an INVALID index. Now
/// the build waits for it, says so, scans the table once and is valid when it commits.
/// Fails on the code before: phased exits 1 before the build has waited 3s.
#[tokio::test]
async fn a_build_waits_for_an_old_transaction_on_another_table_and_finishes_when_it_commits() {
    let db = TestDb::pg().await;
    tables(&db, 1_000_000).await;
    let pgdb = pg(&db);
    let (old, old_pid) = old_transaction(pgdb, "SELECT count(*) FROM other_table").await;
    let watcher = pgdb.client().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan_path = write_plan(&dir, REPRO_PLAN);
    let mut capture = PgCapture::start_for_url(&pgdb.url);
    let url = capture.url(&pgdb.url);
    let mut phased =
        Background::start(&["run", &plan_path, "--format", "json", "--database", &url]);

    // Past lock_timeout (2s), by the server's clock, the build still waits for the old read.
    phased
        .wait_until(&watcher, &build_waits_for(old_pid, 3))
        .await;
    let event = phased
        .wait_for_event("a progress event naming the old transaction", |e| {
            index_progress(e).is_some_and(|p| waits_for_pid(p, old_pid))
        })
        .await;
    let progress = &event["progress"];
    assert_eq!(progress["phase"], "waiting for old snapshots", "{event}");
    assert_eq!(progress["command"], "CREATE INDEX CONCURRENTLY", "{event}");
    let named = progress["waiting_for"]
        .as_array()
        .and_then(|w| w.iter().find(|s| s["pid"] == old_pid))
        .cloned()
        .unwrap_or_default();
    assert_eq!(named["state"], "idle in transaction", "{event}");
    assert_eq!(named["application_name"], "report", "{event}");
    assert!(
        named["query"]
            .as_str()
            .is_some_and(|q| q.starts_with("SELECT count(*) FROM other_table")),
        "{event}"
    );
    assert!(
        named["seconds"].as_f64().is_some_and(|s| s > 0.0),
        "{event}"
    );

    // `phased status` shows it too, from the step's state.
    phased
        .wait_until(
            &watcher,
            &format!(
                "SELECT progress::jsonb @> '{{\"phase\": \"waiting for old snapshots\", \"waiting_for\": [{{\"pid\": {old_pid}}}]}}' \
                 FROM phased.steps WHERE plan = 'repro'"
            ),
        )
        .await;
    let status = common::phased_cmd()
        .args(["status", &plan_path, "--database", &pgdb.url])
        .output()
        .expect("phased status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("CREATE INDEX CONCURRENTLY now: waiting for old snapshots")
            && text.contains(&format!(
                "waiting for pid {old_pid} (report), idle in transaction"
            )),
        "{text}"
    );

    old.batch_execute("COMMIT")
        .await
        .expect("commit the old read");
    assert_eq!(phased.exit_code().await, Some(0), "{}", phased.stderr());
    capture.stop();

    assert_eq!(validity(&watcher, "big_v_idx").await, vec![true]);
    let builds = capture
        .connections()
        .iter()
        .flat_map(|c| c.received.clone())
        .filter(|r| r.sql.starts_with("CREATE INDEX CONCURRENTLY"))
        .count();
    assert_eq!(builds, 1, "one build, one scan of the table");
    let attempts: i32 = watcher
        .query_one(
            "SELECT attempts FROM phased.steps WHERE plan = 'repro'",
            &[],
        )
        .await
        .expect("attempts")
        .get(0);
    assert_eq!(attempts, 1);
    assert!(
        !phased.events().iter().any(|e| e["event"] == "step_retry"),
        "{:#?}",
        phased.events()
    );
}

/// A session holding a lock on the table itself that the build's SHARE UPDATE EXCLUSIVE
/// conflicts with still makes the build give up after lock_timeout and retry, naming it; the
/// build succeeds once the lock is released. (This held on the code before too: it pins that
/// the wait for the table lock keeps lock_timeout and the retry policy.)
#[tokio::test]
async fn a_lock_on_the_table_itself_still_times_out_and_is_retried() {
    let db = TestDb::pg().await;
    tables(&db, 10_000).await;
    let pgdb = pg(&db);
    let holder = pgdb.client().await;
    holder
        .batch_execute("SET application_name = 'locker'; BEGIN; LOCK TABLE big IN SHARE MODE;")
        .await
        .expect("lock the table");
    let holder_pid = backend_pid(&holder).await;
    let loaded = plan(
        "plan: share-lock
defaults:
  lock_timeout: 500ms
  retry: { attempts: 20, backoff: 100ms, max_backoff: 200ms }
phases:
  - name: expand
    kind: expand
    steps:
      - create_index: { table: big, name: big_v_idx, columns: [v] }
",
    );
    let dba = pgdb.client().await;
    let release = async {
        // The first attempt gave up on the lock and the second has started.
        let start = Instant::now();
        loop {
            let retried: Option<bool> = dba
                .query_opt(
                    "SELECT attempts >= 2 FROM phased.steps WHERE plan = 'share-lock'",
                    &[],
                )
                .await
                .ok()
                .flatten()
                .and_then(|r| r.get(0));
            if retried == Some(true) {
                break;
            }
            assert!(start.elapsed() < PATIENCE, "no retry happened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        holder.batch_execute("COMMIT").await.expect("release");
    };
    let (result, ()) = tokio::join!(run(&db, &loaded, RunOptions::default()), release);
    let events = match result {
        Ok(events) => events,
        Err((e, events)) => {
            panic!("the build should succeed once the lock is gone: {e}\n{events:#?}")
        }
    };
    let retry = events
        .iter()
        .find_map(|e| match e {
            Event::StepRetry {
                error, blockers, ..
            } => Some((error.clone(), blockers.clone())),
            _ => None,
        })
        .expect("a retry after the lock timeout");
    assert!(retry.0.contains("lock timeout"), "{}", retry.0);
    assert!(
        retry.0.contains("ShareUpdateExclusiveLock on big"),
        "the lock and the table are named: {}",
        retry.0
    );
    assert!(
        retry
            .1
            .iter()
            .any(|b| b.starts_with(&format!("pid {holder_pid} (locker)"))),
        "the holder is named: {:?}",
        retry.1
    );
    assert_eq!(validity(&dba, "big_v_idx").await, vec![true]);
}

/// `index_wait_timeout` ends the wait: exit 1, the old transaction named, the INVALID index the
/// build left dropped. Fails on the code before (which knows no `index_wait_timeout`, and
/// left an INVALID index after its lock timeouts).
#[tokio::test]
async fn index_wait_timeout_fails_the_step_names_the_old_transaction_and_leaves_nothing_invalid() {
    let db = TestDb::pg().await;
    tables(&db, 50_000).await;
    let pgdb = pg(&db);
    let (old, old_pid) = old_transaction(pgdb, "SELECT count(*) FROM other_table").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan_path = write_plan(
        &dir,
        "plan: wait-timeout
backup: { before: [] }
defaults:
  lock_timeout: 500ms
  index_wait_timeout: 1s
  retry: { attempts: 3, backoff: 100ms, max_backoff: 200ms }
phases:
  - name: expand
    kind: expand
    steps:
      - create_index: { table: big, name: big_v_idx, columns: [v] }
",
    );
    let out = common::phased_cmd()
        .args(["run", &plan_path, "--database", &pgdb.url])
        .output()
        .expect("phased run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("index_wait_timeout: 1.0s"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "waiting for pid {old_pid} (report), idle in transaction, transaction open for"
        )) && stderr.contains(": SELECT count(*) FROM other_table"),
        "the old transaction is named, with the start of its query: {stderr}"
    );
    assert!(
        stderr.contains("phased dropped the INVALID index \"big_v_idx\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("while running:\n    CREATE INDEX CONCURRENTLY"),
        "{stderr}"
    );
    let client = pgdb.client().await;
    assert_eq!(validity(&client, "big_v_idx").await, Vec::<bool>::new());
    let row = client
        .query_one(
            "SELECT status, attempts, last_error, progress::jsonb ->> 'phase' FROM phased.steps WHERE plan = 'wait-timeout'",
            &[],
        )
        .await
        .expect("state");
    assert_eq!(row.get::<_, String>(0), "failed");
    assert_eq!(row.get::<_, i32>(1), 1, "a wait timeout is not retried");
    assert!(
        row.get::<_, String>(2)
            .contains(&format!("waiting for pid {old_pid} ")),
        "the recorded error names it"
    );
    assert_eq!(
        row.get::<_, Option<String>>(3).as_deref(),
        Some("waiting for old snapshots"),
        "status shows where the build stopped"
    );
    drop(old);
}

/// The same care for a `transactional: false` script: its build outlasts lock_timeout on an
/// old transaction, gives up at the step's own `index_wait_timeout`, and the INVALID index it
/// left (found through the build's progress) is dropped. Fails on the code before.
#[tokio::test]
async fn a_script_build_gives_up_at_its_own_index_wait_timeout_and_drops_what_it_left() {
    let db = TestDb::pg().await;
    tables(&db, 50_000).await;
    let pgdb = pg(&db);
    let (_old, old_pid) = old_transaction(pgdb, "SELECT count(*) FROM other_table").await;
    let loaded = plan(
        "plan: script-wait
defaults:
  lock_timeout: 300ms
  retry: { attempts: 3, backoff: 100ms, max_backoff: 200ms }
phases:
  - name: expand
    kind: expand
    steps:
      - sql: { up: \"CREATE INDEX CONCURRENTLY big_expr_idx ON big ((v + 1))\", down: \"DROP INDEX CONCURRENTLY big_expr_idx\", transactional: false, index_wait_timeout: 1500ms }
",
    );
    let (err, events) = run(&db, &loaded, RunOptions::default())
        .await
        .expect_err("the old transaction outlasts index_wait_timeout");
    let EngineError::StepFailed { error, .. } = &err else {
        panic!("a step failure was expected: {err}")
    };
    assert!(error.contains("index_wait_timeout: 1.5s"), "{error}");
    assert!(
        error.contains(&format!("waiting for pid {old_pid} ")),
        "{error}"
    );
    assert!(
        error.contains("phased dropped the INVALID index"),
        "{error}"
    );
    assert!(!events.iter().any(|e| matches!(e, Event::StepRetry { .. })));
    let client = pgdb.client().await;
    assert_eq!(validity(&client, "big_expr_idx").await, Vec::<bool>::new());
}

/// `DROP INDEX CONCURRENTLY` waits for every transaction that has used the table: it outlasts
/// lock_timeout on an old reader of the table, names it, and finishes when it commits. Fails on
/// the code before (its lock_timeout gave up, attempt after attempt).
#[tokio::test]
async fn a_concurrent_drop_waits_for_a_reader_of_the_table_and_finishes_when_it_commits() {
    let db = TestDb::pg().await;
    tables(&db, 1_000).await;
    db.execute("CREATE INDEX big_v_idx ON big (v)").await;
    let pgdb = pg(&db);
    let (old, old_pid) = old_transaction(pgdb, "SELECT count(*) FROM big").await;
    let loaded = plan(
        "plan: drop-wait
backup: { before: [] }
defaults:
  lock_timeout: 300ms
  retry: { attempts: 2, backoff: 100ms, max_backoff: 100ms }
phases:
  - name: contract
    kind: contract
    steps:
      - drop_index: { name: big_v_idx }
",
    );
    let dba = pgdb.client().await;
    let commit = async {
        let start = Instant::now();
        let waiting = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted \
             WHERE a.datname = current_database() AND a.query LIKE 'DROP INDEX CONCURRENTLY%' \
             AND l.locktype = 'virtualxid' AND {old_pid} = ANY (pg_blocking_pids(a.pid)) \
             AND clock_timestamp() - l.waitstart > interval '1 second')"
        );
        loop {
            let ok: bool = dba.query_one(&waiting, &[]).await.expect("look").get(0);
            let attempts: Option<i32> = dba
                .query_opt(
                    "SELECT attempts FROM phased.steps WHERE plan = 'drop-wait' AND status = 'failed'",
                    &[],
                )
                .await
                .ok()
                .flatten()
                .map(|r| r.get(0));
            assert!(
                attempts.is_none(),
                "the drop failed while the reader was open"
            );
            if ok {
                break;
            }
            assert!(start.elapsed() < PATIENCE, "the drop never waited");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        old.batch_execute("COMMIT").await.expect("commit");
    };
    let (result, ()) = tokio::join!(run(&db, &loaded, RunOptions::default()), commit);
    let events = result.unwrap_or_else(|(e, ev)| panic!("{e}\n{ev:#?}"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::IndexProgress { progress, .. }
            if progress.command == "DROP INDEX CONCURRENTLY"
                && progress.waiting_for.iter().any(|w| w.pid == old_pid))),
        "the reader is named while the drop waits: {events:#?}"
    );
    assert_eq!(validity(&dba, "big_v_idx").await, Vec::<bool>::new());
}

/// A unique build that fails on duplicates (a real error) drops the INVALID index it left, and
/// says so. Fails on the code before, which left it for the next run.
#[tokio::test]
async fn a_unique_build_that_fails_on_duplicates_leaves_no_invalid_index() {
    let db = TestDb::pg().await;
    tables(&db, 5_000).await;
    let loaded = plan(
        "plan: unique-dup
phases:
  - name: expand
    kind: expand
    steps:
      - create_index: { table: big, name: big_v_key, columns: [v], unique: true }
",
    );
    let (err, _) = run(&db, &loaded, RunOptions::default())
        .await
        .expect_err("v has duplicates");
    let text = err.to_string();
    assert!(text.contains("23505"), "{text}");
    assert!(
        text.contains("phased dropped the INVALID index \"big_v_key\""),
        "{text}"
    );
    let client = pg(&db).client().await;
    assert_eq!(validity(&client, "big_v_key").await, Vec::<bool>::new());
}

/// PostgreSQL's phases of `CREATE INDEX CONCURRENTLY`, in the order it goes through them.
const PHASES: &[&str] = &[
    "waiting for writers before build",
    "building index: scanning table",
    "building index: sorting live tuples",
    "building index: loading tuples in tree",
    "waiting for writers before validation",
    "index validation: scanning index",
    "index validation: sorting tuples",
    "index validation: scanning table",
    "waiting for old snapshots",
    "waiting for readers before marking dead",
    "waiting for readers before dropping",
];

/// Progress events follow the build through its phases, in PostgreSQL's order, with blocks
/// done against the total while it scans; `phased status` shows the phase while it runs. The
/// build is held in its scan by an advisory lock its predicate takes at one row (held by the
/// test), then at `waiting for old snapshots` by an old transaction. Fails on the code before
/// (no progress at all).
#[tokio::test]
async fn progress_events_advance_through_the_phases() {
    let db = TestDb::pg().await;
    tables(&db, 200_000).await;
    db.execute(
        "CREATE FUNCTION hold_at(id bigint) RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $$
         BEGIN
           IF id = 100000 THEN
             PERFORM pg_advisory_lock_shared(4242);
             PERFORM pg_advisory_unlock_shared(4242);
           END IF;
           RETURN true;
         END $$",
    )
    .await;
    let pgdb = pg(&db);
    let gate = pgdb.client().await;
    gate.batch_execute("SET application_name = 'gate'; SELECT pg_advisory_lock(4242)")
        .await
        .expect("hold the gate");
    let (old, old_pid) = old_transaction(pgdb, "SELECT count(*) FROM other_table").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan_path = write_plan(
        &dir,
        "plan: progress
backup: { before: [] }
phases:
  - name: expand
    kind: expand
    steps:
      - create_index: { table: big, name: big_v_idx, columns: [v], where: \"hold_at(id)\" }
",
    );
    let mut phased = Background::start(&[
        "run",
        &plan_path,
        "--format",
        "json",
        "--database",
        &pgdb.url,
    ]);
    let watcher = pgdb.client().await;

    // Held half-way through the scan.
    phased
        .wait_until(
            &watcher,
            "SELECT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p JOIN pg_locks l ON l.pid = p.pid AND NOT l.granted \
             WHERE p.phase = 'building index: scanning table' AND p.blocks_done > 0 AND l.locktype = 'advisory')",
        )
        .await;
    let scanning = phased
        .wait_for_event("progress in the scan", |e| {
            index_progress(e).is_some_and(|p| {
                p["phase"] == "building index: scanning table"
                    && p["unit"] == "blocks"
                    && p["done"].as_u64().is_some_and(|d| d > 0)
            })
        })
        .await;
    let p = &scanning["progress"];
    let (done, total) = (
        p["done"].as_u64().unwrap_or(0),
        p["total"].as_u64().unwrap_or(0),
    );
    assert!(done < total, "half-way: {p}");
    assert_eq!(p["index"], "big_v_idx", "{p}");
    assert_eq!(scanning["label"], "create_index big_v_idx", "{scanning}");
    phased
        .wait_until(
            &watcher,
            "SELECT progress::jsonb ->> 'phase' = 'building index: scanning table' FROM phased.steps WHERE plan = 'progress'",
        )
        .await;
    let status = common::phased_cmd()
        .args([
            "status",
            &plan_path,
            "--format",
            "json",
            "--database",
            &pgdb.url,
        ])
        .output()
        .expect("phased status");
    let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let step = &status["phases"][0]["steps"][0];
    assert_eq!(step["status"], "running", "{step}");
    assert_eq!(
        step["progress"]["phase"], "building index: scanning table",
        "{step}"
    );
    assert_eq!(step["progress"]["unit"], "blocks", "{step}");

    gate.batch_execute("SELECT pg_advisory_unlock(4242)")
        .await
        .expect("open the gate");
    phased
        .wait_until(&watcher, &build_in_phase("waiting for old snapshots"))
        .await;
    phased
        .wait_for_event("the wait for old snapshots", |e| {
            index_progress(e).is_some_and(|p| {
                p["phase"] == "waiting for old snapshots" && waits_for_pid(p, old_pid)
            })
        })
        .await;
    old.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(phased.exit_code().await, Some(0), "{}", phased.stderr());

    let seen: Vec<String> = phased
        .events()
        .iter()
        .filter_map(|e| {
            index_progress(e)
                .and_then(|p| p["phase"].as_str())
                .map(str::to_string)
        })
        .collect();
    // PostgreSQL's phases in the order seen (phased's own words for a moment without one,
    // `initializing` or `running`, aside).
    let mut order = Vec::new();
    for phase in &seen {
        let Some(at) = PHASES.iter().position(|p| p == phase) else {
            assert!(
                phase == "initializing" || phase == "running",
                "an unknown phase `{phase}` in {seen:?}"
            );
            continue;
        };
        if order.last() != Some(&at) {
            order.push(at);
        }
    }
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "the phases go forward: {seen:?}"
    );
    assert!(order.len() >= 2, "{seen:?}");
    let blocks: Vec<(u64, u64)> = phased
        .events()
        .iter()
        .filter_map(index_progress)
        .filter(|p| p["phase"] == "building index: scanning table")
        .filter_map(|p| Some((p["done"].as_u64()?, p["total"].as_u64()?)))
        .collect();
    assert!(
        blocks.windows(2).all(|w| w[0].0 <= w[1].0) && blocks.iter().all(|(d, t)| d <= t),
        "blocks done only grow, within the total: {blocks:?}"
    );
    assert_eq!(validity(&watcher, "big_v_idx").await, vec![true]);
    let cleared: Option<String> = watcher
        .query_one(
            "SELECT progress FROM phased.steps WHERE plan = 'progress'",
            &[],
        )
        .await
        .expect("state")
        .get(0);
    assert_eq!(cleared, None, "a finished build leaves no progress behind");
}

/// Ctrl-C while the build waits: the run stops (exit 130, the step recorded as interrupted),
/// and the INVALID index the cancelled build left is dropped before phased exits instead of
/// being left for the next run. Fails on the code before, which left it.
#[tokio::test]
async fn an_interrupt_cancels_the_build_and_drops_what_it_left() {
    let db = TestDb::pg().await;
    tables(&db, 50_000).await;
    let pgdb = pg(&db);
    let (_old, old_pid) = old_transaction(pgdb, "SELECT count(*) FROM other_table").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan_path = write_plan(
        &dir,
        &REPRO_PLAN.replace("plan: repro", "plan: interrupted"),
    );
    let mut phased = Background::start(&["run", &plan_path, "--database", &pgdb.url]);
    let watcher = pgdb.client().await;
    phased
        .wait_until(&watcher, &build_waits_for(old_pid, 0))
        .await;
    let status = Command::new("kill")
        .args(["-INT", &phased.child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    assert_eq!(phased.exit_code().await, Some(130), "{}", phased.stderr());
    let stderr = phased.stderr();
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        stderr.contains("phased dropped the INVALID index \"big_v_idx\""),
        "{stderr}"
    );
    assert_eq!(validity(&watcher, "big_v_idx").await, Vec::<bool>::new());
    let building: bool = watcher
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'CREATE INDEX%' AND state = 'active')",
            &[],
        )
        .await
        .expect("look")
        .get(0);
    assert!(!building, "no build is left running on the server");
    let recorded: String = watcher
        .query_one(
            "SELECT status FROM phased.steps WHERE plan = 'interrupted'",
            &[],
        )
        .await
        .expect("state")
        .get(0);
    assert_eq!(recorded, "failed");
}

/// `index_wait_timeout` is read in `defaults` and on steps; a typo is a located error; on a
/// transactional `sql` step, where it cannot apply, `validate` warns.
#[test]
fn index_wait_timeout_is_validated_where_it_is_written() {
    let loaded = plan(
        "plan: knobs
defaults: { index_wait_timeout: 30m }
phases:
  - name: expand
    kind: expand
    steps:
      - create_index: { table: big, name: big_v_idx, columns: [v], index_wait_timeout: 0 }
",
    );
    assert_eq!(
        loaded.plan.defaults.index_wait_timeout.0,
        Duration::from_secs(1800)
    );
    let typo = phased::plan::parse_str(
        "typo.yaml",
        "plan: typo
phases:
  - name: expand
    kind: expand
    steps:
      - create_index: { table: big, name: big_v_idx, columns: [v], index_wait_timeout: 2 hours }
",
        std::path::Path::new("."),
    );
    let report = match typo {
        Ok(_) => panic!("`2 hours` is not a duration"),
        Err(report) => report.render_plain(),
    };
    assert!(report.contains("typo.yaml:6:"), "{report}");
    let warned = plan(
        "plan: warned
phases:
  - name: expand
    kind: expand
    steps:
      - sql: { up: \"CREATE INDEX i ON big (v)\", index_wait_timeout: 5m }
",
    );
    let findings: Vec<String> = phased::plan::validate::validate(&warned.plan)
        .iter()
        .map(|f| format!("{f:?}"))
        .collect();
    assert!(
        findings
            .iter()
            .any(|f| f.contains("`index_wait_timeout` has no effect on a transactional `sql` step")),
        "{findings:?}"
    );
}
