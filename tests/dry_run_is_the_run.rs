//! `phased plan` prints what `phased run` sends, in order: the statements PostgreSQL actually
//! received during a run (captured on the wire by `common::pg_capture`) are those the dry run
//! recorded, bound values aside. Look-ups (SELECTs) are left out on both sides: a dry run reads
//! what is there before the run, the run what is there as it goes.

use crate::common::{self, pg_capture::PgCapture, TestDb};

/// Whitespace and a final `;` are not part of what a statement says.
fn normal(sql: &str) -> String {
    sql.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches(';')
        .trim_end()
        .to_string()
}

fn is_lookup(sql: &str) -> bool {
    sql.to_ascii_uppercase().starts_with("SELECT")
}

/// A state write that records a runner's work is sent, by a runner holding the lease, in a
/// transaction of its own that first proves the lease's generation (a look-up); a dry run
/// takes no lease and sends the write alone. So a `BEGIN`, one bookkeeping write of phased's
/// own (or none: a backup's record, left out below) and a `COMMIT` count as that write.
fn without_fence_transactions(sent: Vec<String>) -> Vec<String> {
    let bookkeeping = |sql: &str| {
        (sql.starts_with("UPDATE phased.steps") || sql.starts_with("INSERT INTO phased.steps"))
            && !sql.contains(';')
    };
    let mut out = Vec::with_capacity(sent.len());
    let mut i = 0;
    while i < sent.len() {
        if sent[i] == "BEGIN" {
            if sent.get(i + 1).is_some_and(|s| s == "COMMIT") {
                i += 2;
                continue;
            }
            if sent.get(i + 1).is_some_and(|s| bookkeeping(s))
                && sent.get(i + 2).is_some_and(|s| s == "COMMIT")
            {
                out.push(sent[i + 1].clone());
                i += 3;
                continue;
            }
        }
        out.push(sent[i].clone());
        i += 1;
    }
    out
}

/// The dry run's statements, in order: (statement, repeats once per backfill batch).
fn recorded(json: &str) -> Vec<(String, bool)> {
    let entries: serde_json::Value = serde_json::from_str(json).expect("plan --format json");
    entries
        .as_array()
        .expect("an array of entries")
        .iter()
        .filter(|e| e["entry"] == "sql" && e["effect"] != "read")
        .map(|e| {
            (
                normal(e["sql"].as_str().expect("sql text")),
                e["repeats"].as_bool().unwrap_or(false),
            )
        })
        .filter(|(sql, _)| !is_lookup(sql))
        .collect()
}

/// Matches the run's statements against the recording: a repeated block (a backfill's later
/// batch) stands for any number of batches, at least one: the last batch, which finds no row,
/// sends the same statements (a batch is one statement that finds its rows itself).
fn assert_same(plan: &[(String, bool)], run: &[String]) {
    let mut r = 0;
    let mut p = 0;
    let here = |r: usize| run.get(r).cloned().unwrap_or_else(|| "<end of run>".into());
    while p < plan.len() {
        if plan[p].1 {
            let end = (p..plan.len()).find(|&i| !plan[i].1).unwrap_or(plan.len());
            let block: Vec<&String> = plan[p..end].iter().map(|(s, _)| s).collect();
            let mut batches = 0;
            while run.len() >= r + block.len()
                && block.iter().enumerate().all(|(i, s)| run[r + i] == **s)
            {
                r += block.len();
                batches += 1;
            }
            assert!(
                batches >= 1,
                "the repeated batch (at least the last, empty one): expected {:#?}, the run sent {}",
                block,
                here(r)
            );
            p = end;
        } else {
            assert_eq!(
                here(r),
                plan[p].0,
                "statement {r} of the run (plan entry {p})"
            );
            r += 1;
            p += 1;
        }
    }
    assert_eq!(
        r,
        run.len(),
        "the run sent more than the plan showed: {:#?}",
        &run[r..]
    );
}

const PLAN: &str = r#"
plan: dry-run-is-the-run
backup: { before: [] }
phases:
  - name: expand
    kind: expand
    steps:
      - add_column: { table: accounts, name: email_lower, type: text }
      - dual_write: { table: accounts, set: { email_lower: "lower(NEW.email)" } }
      - create_index: { table: accounts, name: accounts_email_lower_idx, columns: [email_lower] }
      - sql: { up: "CREATE INDEX CONCURRENTLY accounts_email_idx ON accounts (email); CREATE INDEX CONCURRENTLY accounts_id_email_idx ON accounts (id, email)", down: "DROP INDEX accounts_id_email_idx; DROP INDEX accounts_email_idx", transactional: false }
  - name: backfill
    kind: migrate
    steps:
      - backfill: { table: accounts, set: { email_lower: "lower(email)" }, where: "email_lower IS NULL", batch_size: 40, pause: 0s }
  - name: switch
    kind: switch-flag
    steps:
      - flag: { name: read_email_lower, value: true }
  - name: contract
    kind: contract
    gate:
      - flag: { name: read_email_lower, is: true }
    steps:
      - drop_dual_write: { table: accounts }
      - set_not_null: { table: accounts, column: email_lower }
"#;

/// What the run sends that the dry run describes in a note instead of recording: a backup
/// (`SHOW server_version_num` before `pg_dump`, whose own session, `phased/backup`, is left out,
/// and the verified backup's record in `phased.backups`).
fn is_backup_bookkeeping(sql: &str) -> bool {
    sql.starts_with("SHOW ")
        || sql.starts_with("INSERT INTO phased.backups")
        || sql.starts_with("DELETE FROM phased.backups")
}

/// Runs `plan` (a file in its folder) with `phased plan --format json`, then with `phased run`
/// through a capturing proxy, and compares what PostgreSQL received with the recording.
pub(crate) async fn assert_run_is_the_dry_run(db: &TestDb, plan: &std::path::Path) {
    let plan = plan.display().to_string();
    let dry = common::phased_cmd()
        .args(["plan", &plan, "--format", "json", "--database", &db.url()])
        .output()
        .expect("phased plan");
    assert_eq!(
        dry.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let shown = recorded(&String::from_utf8_lossy(&dry.stdout));

    let mut capture = PgCapture::start_for_url(&db.url());
    let run = common::phased_cmd()
        .args(["run", &plan, "--database", &capture.url(&db.url())])
        .output()
        .expect("phased run");
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    capture.stop();

    // phased's own sessions, less the one that only holds the lease and those that watch a
    // concurrent index build (`phased/<plan>/watch`: they read the build's progress and record
    // it for `status`; the dry run notes them instead).
    let sent: Vec<String> = capture
        .connections()
        .into_iter()
        .filter(|c| {
            c.application_name().is_some_and(|a| {
                a.starts_with("phased/") && a != "phased/backup" && !a.ends_with("/watch")
            })
        })
        .filter(|c| {
            !c.received
                .iter()
                .any(|r| r.sql.contains("pg_try_advisory_lock"))
        })
        .flat_map(|c| c.received)
        .map(|r| normal(&r.sql))
        .filter(|sql| !is_lookup(sql) && !is_backup_bookkeeping(sql))
        .collect();
    assert_same(&shown, &without_fence_transactions(sent));
}

#[tokio::test]
async fn postgres_receives_what_the_dry_run_printed() {
    let db = TestDb::pg().await;
    db.execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL); \
         INSERT INTO accounts SELECT i, 'User' || i || '@Example.COM' FROM generate_series(1, 100) i",
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, PLAN).expect("write plan");
    assert_run_is_the_dry_run(&db, &plan).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM accounts WHERE email_lower IS NULL")
            .await,
        0
    );
}

/// The plan in the README, on the table it expects.
#[tokio::test]
async fn the_readme_example_sends_what_its_dry_run_printed() {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).expect("README");
    let start = readme
        .find("```yaml\nplan: accounts-email-lower")
        .expect("the README's example plan");
    let body = &readme[start + "```yaml\n".len()..];
    let yaml = &body[..body.find("```").expect("the end of the example")];
    let db = TestDb::pg().await;
    db.execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL); \
         INSERT INTO accounts SELECT i, 'User' || i || '@Example.COM' FROM generate_series(1, 50) i",
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, yaml).expect("write plan");
    assert_run_is_the_dry_run(&db, &plan).await;
    assert!(!db.has_column("accounts", "email").await);
}

/// The shipped plans, from copies in a temp folder (they name `../migrations`).
#[tokio::test]
async fn the_shipped_plans_send_what_their_dry_runs_printed() {
    for name in ["quickstart.yaml", "migrations.yaml"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let plans = dir.path().join("plans");
        let migrations = dir.path().join("migrations");
        std::fs::create_dir_all(&plans).expect("plans folder");
        std::fs::create_dir_all(&migrations).expect("migrations folder");
        let root = common::repo_root();
        std::fs::copy(root.join("plans").join(name), plans.join(name)).expect("copy plan");
        for entry in std::fs::read_dir(root.join("migrations")).expect("migrations") {
            let entry = entry.expect("a migration");
            std::fs::copy(entry.path(), migrations.join(entry.file_name())).expect("copy");
        }
        let db = TestDb::pg().await;
        assert_run_is_the_dry_run(&db, &plans.join(name)).await;
    }
}
