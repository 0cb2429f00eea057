//! `throttle: auto` against a real workload: another session holding what the backfill needs
//! (PostgreSQL: row locks; SQLite: the write lock) makes the pace drop, with the signal and its
//! value in the progress events, and the pace recovers once it lets go. Assertions read the
//! reported pace and reasons and the rows, never the clock; the disturbances wait on
//! conditions seen in the database.

use std::time::{Duration, Instant};

use phased::engine::pace::{PaceReport, Trend};
use phased::engine::{Event, RunOptions};

use crate::common::{backend_pid, pg, plan, run, TestDb};

/// Creates `items (id, v, filled)` with `rows` rows.
async fn seed_items(db: &TestDb, rows: i64) {
    db.execute(&if db.is_pg() {
        format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, v integer NOT NULL, filled text);
             INSERT INTO items (id, v) SELECT i, i FROM generate_series(1, {rows}) AS i;"
        )
    } else {
        format!(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER NOT NULL, filled TEXT);
             INSERT INTO items (id, v) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) SELECT i, i FROM n;"
        )
    })
    .await;
}

/// A backfill with no fixed knob (so `throttle: auto`), patient on locks: a batch waits for
/// the disturbance to end instead of failing.
/// The PostgreSQL pace tests take turns: the probe counts every client session of the server
/// at work (other tests' too, by design: they share its CPU and its disk), so the busy
/// workload of one (`pg_next_to_a_busy_workload_the_backfill_looks_at_it_alone`: eight
/// sessions in a transaction) was another's, whose pace then never recovered from its stall
/// (seen in CI: "8.0 in flight on 10 connections", every look after the stall over a busy
/// workload's limit).
static SERVER_PACE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const AUTO_PLAN: &str = r#"
plan: fill
phases:
  - name: backfill
    kind: migrate
    steps:
      - backfill:
          table: items
          set: { filled: "'v' || v" }
          lock_timeout: 60s
"#;

/// The pace reports of a run's progress events, in order (pauses left out).
fn paces(events: &[Event]) -> Vec<PaceReport> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::BackfillProgress {
                pace: Some(pace),
                paused: None,
                ..
            } => Some(pace.clone()),
            _ => None,
        })
        .collect()
}

/// The pace dropped on `signal` (the event before shows the pace it dropped from), then rose
/// again after it.
fn assert_dropped_then_recovered(paces: &[PaceReport], signal: &str, reason: &str) {
    let shown = || {
        paces
            .iter()
            .map(PaceReport::describe)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        paces.iter().all(|p| p.throttle == "auto"),
        "auto by default:\n{}",
        shown()
    );
    let down = paces
        .iter()
        .position(|p| p.trend == Trend::Down && p.signal == signal)
        .unwrap_or_else(|| panic!("no slowdown on {signal}:\n{}", shown()));
    let slowed = &paces[down];
    assert!(
        slowed.reason.starts_with("slowed: ") && slowed.reason.contains(reason),
        "{}",
        slowed.reason
    );
    assert!(slowed.value.is_some_and(|v| v > 0.0), "{slowed:?}");
    assert!(down > 0, "a pace before the slowdown:\n{}", shown());
    // Each move is reported: the event before shows the pace it moved from.
    assert!(
        lower(slowed, &paces[down - 1]),
        "the pace dropped:\n{}",
        shown()
    );
    let recovered = (down + 1..paces.len())
        .find(|&i| paces[i].trend == Trend::Up)
        .unwrap_or_else(|| panic!("no recovery after the slowdown:\n{}", shown()));
    assert!(
        paces[recovered].reason.starts_with("sped up: "),
        "{:?}",
        paces[recovered]
    );
    assert!(
        lower(&paces[recovered - 1], &paces[recovered]),
        "the pace rose again:\n{}",
        shown()
    );
}

/// `a` is a slower pace than `b`: a shorter batch or a smaller share of time, neither larger.
fn lower(a: &PaceReport, b: &PaceReport) -> bool {
    let (batch, duty) = (a.batch_time_ms - b.batch_time_ms, a.duty - b.duty);
    batch <= 1e-9 && duty <= 1e-9 && (batch < -1e-9 || duty < -1e-9)
}

/// Polls `check` until it holds (within two minutes, for a loaded machine).
async fn until<F: AsyncFn() -> bool>(what: &str, check: F) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// PostgreSQL: another session holds row locks ahead of the backfill. The backfill's batch
/// waits on them, its probe sees whom it waits on (`pg_blocking_pids`), and once the locks go
/// the pace drops, saying so; later looks find the workload healthy and the pace rises again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_pace_drops_while_another_session_holds_row_locks_then_recovers() {
    let _turn = SERVER_PACE.lock().await;
    // Rows held near the start: on a loaded machine the probe finds the workload slow and the
    // pace low from the first batch, and the test must not depend on how fast the backfill
    // gets anywhere. Enough rows after them for the looks that follow the release (each
    // judges a second's probe commits) to come before the end.
    const ROWS: i64 = 150_000;
    let db = TestDb::pg().await;
    seed_items(&db, ROWS).await;
    let holder = pg(&db).client().await;
    holder
        .batch_execute("BEGIN; SELECT 1 FROM items WHERE id BETWEEN 2000 AND 2010 FOR UPDATE")
        .await
        .expect("lock rows ahead of the backfill");
    let holder_pid = backend_pid(&holder).await;
    let watcher = pg(&db).client().await;
    let disturbance = async {
        // The backfill's batch waits on the held rows …
        let deadline = Instant::now() + Duration::from_secs(600);
        let since: String = loop {
            let seen = watcher
                .query_opt(
                    "SELECT clock_timestamp()::text FROM pg_stat_activity \
                     WHERE $1::int4 = ANY(pg_blocking_pids(pid)) LIMIT 1",
                    &[&holder_pid],
                )
                .await
                .expect("blocked sessions");
            if let Some(row) = seen {
                break row.get(0);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the backfill to wait on the held rows"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // … and the probe has looked at the lock waits since.
        until("the probe to look at the lock waits", async || {
            watcher
                .query_opt(
                    "SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                     AND datname = current_database() AND query LIKE '%pg_blocking_pids(pid)%' \
                     AND query_start > $1::text::timestamptz",
                    &[&since],
                )
                .await
                .expect("the probe's session")
                .is_some()
        })
        .await;
        holder.batch_execute("COMMIT").await.expect("release");
    };
    let p = plan(AUTO_PLAN);
    let (result, ()) = tokio::join!(run(&db, &p, RunOptions::default()), disturbance);
    let events = result.map_err(|(e, _)| e.to_string()).expect("backfill");
    assert_dropped_then_recovered(
        &paces(&events),
        "blocking_sessions",
        "the backfill waited on row locks held by 1 session",
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE filled = 'v' || v")
            .await,
        ROWS
    );
    // The pace is recorded with each checkpoint, for `phased status`.
    let recorded = db
        .scalar("SELECT count(*) FROM phased.steps WHERE progress LIKE '%\"throttle\":\"auto\"%'")
        .await;
    assert_eq!(recorded, 1, "the pace is recorded with the checkpoint");
}

/// PostgreSQL: a probe commit that stalls — here it waits on its own row in
/// `phased.pace_probe`, held by another session, until its `lock_timeout`, as an application
/// commit waits on a disk that stopped — slows the pace at once, whatever the commits' p95
/// says, naming the stall and how long the commit took; once commits are quick again the pace
/// recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_pace_drops_at_once_on_a_stalled_probe_commit_then_recovers() {
    let _turn = SERVER_PACE.lock().await;
    const ROWS: i64 = 150_000;
    let db = TestDb::pg().await;
    seed_items(&db, ROWS).await;
    let watcher = pg(&db).client().await;
    let holder = pg(&db).client().await;
    // A query on the state that fails while the run has not made it yet reads as false.
    let holds = async |sql: &str| {
        watcher
            .query_one(sql, &[])
            .await
            .is_ok_and(|row| row.get::<_, bool>(0))
    };
    let disturbance = async {
        // The baseline is taken before the first batch: stall the commits only after it.
        until("the first batch", async || {
            holds("SELECT coalesce(max(rows_done), 0) > 0 FROM phased.steps WHERE plan = 'fill'")
                .await
        })
        .await;
        holder
            .batch_execute("BEGIN; SELECT 1 FROM phased.pace_probe WHERE plan = 'fill' FOR UPDATE")
            .await
            .expect("hold the probe's row");
        // The pace is recorded with each checkpoint.
        until(
            "the backfill to slow down on the stalled commit",
            async || {
                holds(
                "SELECT coalesce(bool_or(progress LIKE '%\"signal\":\"commit_stall\"%'), false) \
                 FROM phased.steps WHERE plan = 'fill'",
            )
            .await
            },
        )
        .await;
        holder.batch_execute("COMMIT").await.expect("release");
    };
    let p = plan(AUTO_PLAN);
    let (result, ()) = tokio::join!(run(&db, &p, RunOptions::default()), disturbance);
    let events = result.map_err(|(e, _)| e.to_string()).expect("backfill");
    assert_dropped_then_recovered(&paces(&events), "commit_stall", "a probe commit took ");
    let stalled = paces(&events)
        .into_iter()
        .find(|p| p.signal == "commit_stall")
        .expect("a stall");
    // Waited on the held row until its 100 ms lock_timeout: far over the stall limit.
    assert!(
        stalled.value.is_some_and(|v| v >= 90.0),
        "{}",
        stalled.describe()
    );
    assert!(
        stalled.reason.contains("the WAL flush stalled"),
        "{}",
        stalled.reason
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE filled = 'v' || v")
            .await,
        ROWS
    );
}

/// PostgreSQL: the probe times commits of the plan's own row in `phased.pace_probe` (what an
/// application's commit waits for), and counts other client sessions at work, their
/// transactions in flight and their connections: an application's session in a transaction
/// counts for all three, an idle one for the connections only (the server's other sessions,
/// other tests' among them, count too: they share its CPU and its disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_probe_commits_to_its_own_row_and_sees_an_application_at_work() {
    let _turn = SERVER_PACE.lock().await;
    use phased::db::Catalog;
    let db = TestDb::pg().await;
    seed_items(&db, 100).await;
    run(&db, &plan(AUTO_PLAN), RunOptions::default())
        .await
        .map_err(|(e, _)| e.to_string())
        .expect("backfill");
    assert!(
        db.scalar("SELECT beats FROM phased.pace_probe WHERE plan = 'fill'")
            .await
            > 0,
        "the backfill's probe committed to its row"
    );
    let TestDb::Pg(pg_db) = &db else {
        unreachable!("a PostgreSQL test database")
    };
    let mut target = pg_db.target("fill").await;
    let probe = target
        .start_probe("fill", "items", &["id".to_string()])
        .await
        .expect("probe")
        .expect("a probe on PostgreSQL");
    let app = pg(&db).client().await;
    let idle_app = pg(&db).client().await;
    app.batch_execute("BEGIN; SELECT 1 FROM items WHERE id = 1")
        .await
        .expect("the application's transaction");
    let mut seen = phased::db::probe::ProbeWindow::default();
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen.others_active == 0
        || seen.commit_latencies.is_empty()
        || !seen.in_flight.iter().any(|&n| n > 0)
        || seen.connections < 2
    {
        assert!(
            Instant::now() < deadline && !probe.stopped(),
            "timed out waiting for the probe to see the application at work: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen.absorb(probe.take());
    }
    app.batch_execute("COMMIT").await.expect("commit");
    drop(idle_app);
}

/// PostgreSQL, next to a busy workload (its sessions in a transaction most of the time): the
/// backfill pauses now and then to look at the workload alone and take its baseline again,
/// says so in its progress, and fills every row. The first look comes 5 s after the first
/// batch; an operator's cap keeps the backfill running longer than that on any machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_next_to_a_busy_workload_the_backfill_looks_at_it_alone() {
    let _turn = SERVER_PACE.lock().await;
    use phased::db::ControlChange;
    const ROWS: i64 = 2_000;
    let db = TestDb::pg().await;
    seed_items(&db, ROWS).await;
    // The application: eight sessions, each in a transaction (a snapshot, no row locks), so
    // its connections are busy whatever else the server runs.
    let mut app = Vec::new();
    for _ in 0..8 {
        let session = pg(&db).client().await;
        session
            .batch_execute("BEGIN; SELECT count(*) FROM items")
            .await
            .expect("the application's transaction");
        app.push(session);
    }
    let mut target = db.target("fill").await;
    phased::with_target!(&mut target, t => async {
        t.ensure_state().await?;
        t.set_backfill_control("fill", ControlChange::Pace(Some(250)), "test@here").await
    }.await)
    .expect("the operator's cap");
    let events = run(&db, &plan(AUTO_PLAN), RunOptions::default())
        .await
        .map_err(|(e, _)| e.to_string())
        .expect("backfill");
    let looks = events
        .iter()
        .filter(|e| {
            matches!(e, Event::BackfillProgress { paused: Some(why), .. }
                if why == "looking at the workload alone (a new baseline)")
        })
        .count();
    assert!(
        looks > 0,
        "no look at the workload alone: {:#?}",
        paces(&events)
            .iter()
            .map(PaceReport::describe)
            .collect::<Vec<_>>()
    );
    assert!(
        paces(&events).iter().all(|p| p.throttle == "auto"),
        "the look is auto's own"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE filled = 'v' || v")
            .await,
        ROWS
    );
    for session in app {
        session.batch_execute("COMMIT").await.expect("commit");
    }
}

/// SQLite: another connection holds the write lock when the backfill's next batch wants it.
/// The batch waits, reports how long, and the pace drops, saying so; then it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pace_drops_while_another_writer_holds_the_lock_then_recovers() {
    const ROWS: i64 = 100_000;
    let db = TestDb::sqlite();
    seed_items(&db, ROWS).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let throttle = dir.path().join("hold");
    // Held by the throttle file from the start, so the write lock is taken at a known point:
    // after the backfill counted its rows and before its first batch.
    std::fs::write(&throttle, "").expect("throttle file");
    let TestDb::Sqlite(sqlite) = &db else {
        unreachable!("a SQLite database")
    };
    let (writer, watcher) = (sqlite.conn(), sqlite.conn());
    let file = throttle.clone();
    // A thread of its own: the backfill's batch blocks its thread while it waits for the lock.
    let disturbance = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let counted = || {
            watcher
                .query_row(
                    "SELECT count(*) FROM phased_steps WHERE rows_total IS NOT NULL",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap_or(0)
                == 1
        };
        while !counted() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the backfill to count its rows"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        writer
            .execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        std::fs::remove_file(&file).expect("lift the throttle file");
        // The backfill sees the file gone within 200 ms and asks for the write lock; this
        // writer holds it well past that (the stimulus, not an assertion on time).
        std::thread::sleep(Duration::from_secs(1));
        writer
            .execute_batch("COMMIT")
            .expect("release the write lock");
    });
    let options = RunOptions {
        throttle_file: Some(throttle.clone()),
        ..Default::default()
    };
    let result = run(&db, &plan(AUTO_PLAN), options).await;
    disturbance.join().expect("the other writer");
    let events = result.map_err(|(e, _)| e.to_string()).expect("backfill");
    assert_dropped_then_recovered(&paces(&events), "write_lock_wait", "for the write lock");
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE filled = 'v' || v")
            .await,
        ROWS
    );
}

/// Fixed knobs override the automatic pace, and the events say so.
#[tokio::test]
async fn sqlite_fixed_knobs_override_auto() {
    let db = TestDb::sqlite();
    seed_items(&db, 500).await;
    let yaml = AUTO_PLAN.replace("lock_timeout: 60s", "pause: 1ms\n          batch_size: 100");
    let events = run(&db, &plan(&yaml), RunOptions::default())
        .await
        .map_err(|(e, _)| e.to_string())
        .expect("backfill");
    let paces = paces(&events);
    assert!(!paces.is_empty());
    for pace in &paces {
        assert_eq!(pace.throttle, "fixed", "{pace:?}");
        assert_eq!(pace.batch_time_ms, 2.0);
        assert!(pace.reason.starts_with("fixed: the plan's"), "{pace:?}");
    }
}

/// PostgreSQL: a disk whose flush is slow (`commit_delay`: every commit of the database waits
/// 50 ms before its WAL flush) does not shrink `batch_size: auto`'s batches to the least size.
/// The flush counts toward the batch time only up to half of it, so a 20 ms batch time leaves
/// each batch 10 ms of work; counted whole, the 50 ms flush alone was over the batch time, and
/// the batches shrank to 10 rows, a slow commit each. A statement trigger counts the batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_slow_flush_does_not_shrink_the_batches_to_nothing() {
    let _turn = SERVER_PACE.lock().await;
    const ROWS: i64 = 3_000;
    let db = TestDb::pg().await;
    seed_items(&db, ROWS).await;
    db.execute(
        "CREATE TABLE batches (n bigint NOT NULL);
         INSERT INTO batches VALUES (0);
         CREATE FUNCTION count_batch() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN UPDATE batches SET n = n + 1; RETURN NULL; END $$;
         CREATE TRIGGER count_batch AFTER UPDATE ON items
           FOR EACH STATEMENT EXECUTE FUNCTION count_batch();
         DO $$ BEGIN
           EXECUTE format('ALTER DATABASE %I SET commit_delay = 50000', current_database());
           EXECUTE format('ALTER DATABASE %I SET commit_siblings = 0', current_database());
         END $$;",
    )
    .await;
    // The setting reaches new sessions, which the run opens: check one sees it (it needs a
    // superuser, as `commit_delay` does).
    let client = pg(&db).client().await;
    let delay: String = client
        .query_one("SHOW commit_delay", &[])
        .await
        .expect("SHOW commit_delay")
        .get(0);
    assert_eq!(
        delay, "50000",
        "commit_delay (µs) applies to the test database's sessions"
    );
    let yaml = AUTO_PLAN.replace(
        "lock_timeout: 60s",
        "lock_timeout: 60s\n          pause: 0s\n          target_batch_time: 20ms",
    );
    run(&db, &plan(&yaml), RunOptions::default())
        .await
        .map_err(|(e, _)| e.to_string())
        .expect("backfill");
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE filled = 'v' || v")
            .await,
        ROWS
    );
    // 10 ms of work a batch is hundreds of rows (4 batches measured); with the flush counted
    // whole, 161 batches were measured. Statements that found no row count too (the last one).
    let batches = db.scalar("SELECT n FROM batches").await;
    assert!(
        batches * 50 <= ROWS,
        "{batches} batches for {ROWS} rows: fewer than 50 rows a batch"
    );
}
