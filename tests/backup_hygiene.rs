//! What a backup or a restore leaves behind, also when phased is killed with SIGKILL halfway: the
//! file being written is private from its first byte, `pg_dump`/`pg_restore` do not outlive
//! phased, a stale `.partial` is removed by the next run, the restore list is never left on disk,
//! and the rerun of a killed restore succeeds. The tools are held at a known point by a lock a
//! test session holds (never by timing), and every wait is on a condition.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{phased_cmd, real_tool, PgDb, TestDb};

/// A contract phase preceded by a backup; `items` exists before the plan runs.
const PLAN: &str = r#"plan: hyg
backup: { before: [contract], dir: backups }
phases:
  - name: contract
    kind: contract
    steps:
      - sql: "SELECT 1"
"#;

fn plan_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, PLAN).expect("write the plan");
    (dir, file)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Polls `check` until it holds (within a minute, for a loaded machine).
async fn until<F: AsyncFn() -> bool>(what: &str, check: F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `phased` process started in the background; killed if the test fails before it ends.
struct Phased(Child);

impl Phased {
    fn start(args: &[&str], db: &str) -> Self {
        let child = Command::new(assert_cmd::cargo::cargo_bin("phased"))
            .args(args)
            .args(["--database", db])
            .env_remove("DATABASE_URL")
            .env_remove("PHASED_PG_BIN")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start phased");
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill9(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for Phased {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `(pid, parent pid, state)` of a process, from /proc.
fn proc_stat(pid: u32) -> Option<(u32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: comm may hold spaces, so read after the last `)`.
    let rest = text.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// The pid of a child of `parent` running `program` (by its /proc comm).
fn child_named(parent: u32, program: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| {
            proc_stat(pid).is_some_and(|(ppid, _)| ppid == parent)
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == program)
        })
}

/// Gone, or a zombie waiting to be reaped: it runs no more.
fn is_dead(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|(_, state)| matches!(state, 'Z' | 'X'))
}

/// Sessions of the tools (PGAPPNAME phased/backup) waiting for a lock in `db`, started after
/// `since` (server time) when given.
async fn tool_sessions_waiting(db: &PgDb, since: Option<&str>) -> i64 {
    let client = db.client().await;
    let sql = "SELECT count(*) FROM pg_stat_activity \
               WHERE datname = current_database() AND application_name = 'phased/backup' \
                 AND wait_event_type = 'Lock' \
                 AND ($1::text IS NULL OR backend_start > $1::text::timestamptz)";
    client
        .query_one(sql, &[&since])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(0)
}

/// The `.partial` file is created 0600 before `pg_dump` writes a byte: a stand-in pg_dump notes
/// the mode of the file it is handed, then hands over to the real one.
#[tokio::test]
async fn a_partial_backup_is_private_before_pg_dump_writes_to_it() {
    let db = TestDb::pg().await;
    let (dir, file) = plan_dir();
    let bin = tempfile::tempdir().expect("temp dir");
    let seen = bin.path().join("mode-seen");
    for (name, script) in [
        (
            "pg_dump",
            format!(
                "for a in \"$@\"; do case \"$a\" in --file=*) f=\"${{a#--file=}}\";; esac; done\n\
                 if [ -n \"$f\" ]; then stat -c %a \"$f\" > '{}' 2>/dev/null || echo missing > '{}'; fi\n\
                 exec '{}' \"$@\"\n",
                seen.display(),
                seen.display(),
                real_tool("pg_dump")
            ),
        ),
        (
            "pg_restore",
            format!("exec '{}' \"$@\"\n", real_tool("pg_restore")),
        ),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let path = bin.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}")).expect("write the stand-in");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    phased_cmd()
        .arg("run")
        .arg(&file)
        .args(["--database", &db.url()])
        .env("PHASED_PG_BIN", bin.path())
        .assert()
        .success();
    let mode = std::fs::read_to_string(&seen).expect("pg_dump ran with --file");
    assert_eq!(
        mode.trim(),
        "600",
        "the file pg_dump writes into is private from the start"
    );
    drop(dir);
}

/// A `.partial` left by a killed run is removed by the next backup of the plan.
async fn a_stale_partial_is_removed_by_the_next_run(db: TestDb) {
    let (dir, file) = plan_dir();
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).expect("backups folder");
    let ext = if db.is_pg() { "dump" } else { "sqlite" };
    let stale = format!("hyg-contract-20200101T000000.000Z.{ext}.partial");
    let other_plan = format!("other-contract-20200101T000000.000Z.{ext}.partial");
    std::fs::write(backups.join(&stale), b"half a backup").expect("a stale partial");
    std::fs::write(backups.join(&other_plan), b"not ours").expect("another plan's partial");
    phased_cmd()
        .arg("run")
        .arg(&file)
        .args(["--database", &db.url()])
        .assert()
        .success();
    let names = files_in(&backups);
    assert!(
        !names.contains(&stale),
        "the stale partial is gone: {names:?}"
    );
    assert!(
        names.contains(&other_plan),
        "another plan's file is left alone: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with(&format!(".{ext}"))),
        "the new backup is there: {names:?}"
    );
}

#[tokio::test]
async fn a_stale_partial_is_removed_by_the_next_run_on_postgres() {
    a_stale_partial_is_removed_by_the_next_run(TestDb::pg().await).await;
}

#[tokio::test]
async fn a_stale_partial_is_removed_by_the_next_run_on_sqlite() {
    a_stale_partial_is_removed_by_the_next_run(TestDb::sqlite()).await;
}

/// kill -9 of phased while pg_dump waits for a lock: pg_dump goes with it, and the rerun takes
/// a fresh backup and leaves no `.partial`.
#[tokio::test]
async fn pg_dump_does_not_outlive_a_killed_phased() {
    let db = PgDb::new().await;
    let (dir, file) = plan_dir();
    let holder = db.client().await;
    holder
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY); INSERT INTO items VALUES (1), (2)",
        )
        .await
        .expect("items");
    holder
        .batch_execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("hold a lock pg_dump waits for");
    let plan = file.display().to_string();
    let mut phased = Phased::start(&["run", &plan], &db.url);
    until("pg_dump to wait for the lock", async || {
        tool_sessions_waiting(&db, None).await == 1
    })
    .await;
    let dump = child_named(phased.pid(), "pg_dump").expect("pg_dump is phased's child");
    phased.kill9();
    until("pg_dump to end with phased", async || is_dead(dump)).await;
    holder.batch_execute("COMMIT").await.expect("release");
    phased_cmd()
        .arg("run")
        .arg(&file)
        .args(["--database", &db.url])
        .assert()
        .success();
    let names = files_in(&dir.path().join("backups"));
    assert!(
        names.iter().all(|n| !n.contains(".partial")),
        "no partial left: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.ends_with(".dump")),
        "a backup: {names:?}"
    );
}

/// kill -9 of phased while pg_restore is inside its transaction (it created schema `phased`,
/// then waits to create table `items`, which a test session created and has not committed): pg_restore goes with it, no restore list is left,
/// and the rerun restores. Before, the orphaned pg_restore committed behind the rerun's back and
/// the rerun failed on `CREATE SCHEMA phased` (duplicate key in pg_namespace).
#[tokio::test]
async fn a_killed_restore_leaves_no_pg_restore_no_list_and_reruns_cleanly() {
    let source = TestDb::pg().await;
    source
        .execute("CREATE TABLE items (id bigint PRIMARY KEY, note text); INSERT INTO items VALUES (1, 'a'), (2, 'b')")
        .await;
    let (dir, file) = plan_dir();
    phased_cmd()
        .arg("run")
        .arg(&file)
        .args(["--database", &source.url()])
        .assert()
        .success();
    let backup = files_in(&dir.path().join("backups"))
        .into_iter()
        .find(|n| n.ends_with(".dump"))
        .map(|n| dir.path().join("backups").join(n))
        .expect("a backup");
    // Into a database without schema `phased`, where a session is creating `items`.
    let target = PgDb::new().await;
    let holder = target.client().await;
    holder
        .batch_execute("BEGIN; CREATE TABLE items (x integer)")
        .await
        .expect("an uncommitted items");
    let shown = backup.display().to_string();
    let mut phased = Phased::start(&["restore", &shown, "--yes"], &target.url);
    until("pg_restore to wait for the lock", async || {
        tool_sessions_waiting(&target, None).await == 1
    })
    .await;
    let restore = child_named(phased.pid(), "pg_restore").expect("pg_restore is phased's child");
    let killed_pid = phased.pid();
    phased.kill9();
    until("pg_restore to end with phased", async || is_dead(restore)).await;
    let tmp_lists: Vec<String> = files_in(&std::env::temp_dir())
        .into_iter()
        .filter(|n| n.starts_with(&format!("phased-restore-{killed_pid}-")))
        .collect();
    assert!(tmp_lists.is_empty(), "restore lists left: {tmp_lists:?}");
    let beside: Vec<String> = files_in(&dir.path().join("backups"))
        .into_iter()
        .filter(|n| n.contains("restore-list"))
        .collect();
    assert!(beside.is_empty(), "restore lists left: {beside:?}");

    // The rerun, held at the same lock, then let go.
    let since: String = holder
        .query_one("SELECT clock_timestamp()::text", &[])
        .await
        .expect("server time")
        .get(0);
    let rerun = Command::new(assert_cmd::cargo::cargo_bin("phased"))
        .args(["restore", &shown, "--yes", "--database", &target.url])
        .env_remove("DATABASE_URL")
        .env_remove("PHASED_PG_BIN")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rerun the restore");
    until("the rerun to wait", async || {
        tool_sessions_waiting(&target, Some(&since)).await >= 1
    })
    .await;
    holder.batch_execute("ROLLBACK").await.expect("release");
    let out = rerun.wait_with_output().expect("the rerun ends");
    assert!(
        out.status.success(),
        "the rerun restores: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = target
        .client()
        .await
        .query_one(
            "SELECT string_agg(id || note, ',' ORDER BY id) FROM items",
            &[],
        )
        .await
        .expect("items restored")
        .get::<_, Option<String>>(0);
    assert_eq!(restored.as_deref(), Some("1a,2b"));
}
