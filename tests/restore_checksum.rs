//! `phased restore` checks a backup's SHA-256 against the record written with it (`<file>.json`).
//! When that record is there but cannot be read (not JSON, no usable `sha256`, not a file), the
//! restore is refused with exit 1, saying which backup and what could not be read, and the
//! database is left untouched; with the record put back, the same restore goes through.

use std::path::{Path, PathBuf};

use crate::common::{phased_cmd, TestDb};

const PLAN: &str = "plan: rc
backup:
  before: [contract]
  dir: backups
phases:
  - name: setup
    kind: expand
    steps:
      - create_table:
          name: accounts
          columns:
            - { name: id, type: bigint, primary_key: true }
            - { name: email, type: text }
      - sql:
          up: \"INSERT INTO accounts (id, email) VALUES (1, 'ann@example.com'), (2, 'bob@example.com')\"
          down: DELETE FROM accounts
  - name: contract
    kind: contract
    steps:
      - drop_column: { table: accounts, name: email }
";

fn sidecar_of(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(".json");
    PathBuf::from(name)
}

/// What the database holds, to show a refused restore changed nothing: the columns of accounts,
/// its rows, and the plan's state (a restore would bring back `contract` pending and note itself).
async fn fingerprint(db: &TestDb) -> String {
    let (columns, rows, state) = if db.is_pg() {
        (
            "SELECT string_agg(column_name::text, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'accounts'",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM accounts",
            "SELECT string_agg(phase || '#' || step_index || '=' || status, ',' ORDER BY phase, step_index) FROM phased.steps \
             UNION ALL SELECT string_agg(key, ',') FROM phased.meta WHERE key = 'last_restore'",
        )
    } else {
        (
            "SELECT group_concat(name, ',') FROM (SELECT name FROM pragma_table_info('accounts') ORDER BY cid)",
            "SELECT group_concat(id, ',') FROM (SELECT id FROM accounts ORDER BY id)",
            "SELECT group_concat(line, ',') FROM (SELECT phase || '#' || step_index || '=' || status AS line FROM phased_steps ORDER BY phase, step_index) \
             UNION ALL SELECT group_concat(key, ',') FROM phased_meta WHERE key = 'last_restore'",
        )
    };
    let state_lines = match db {
        TestDb::Pg(pg) => pg
            .client()
            .await
            .query(state, &[])
            .await
            .unwrap_or_else(|e| panic!("{state}: {e}"))
            .iter()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
            .collect::<Vec<_>>(),
        TestDb::Sqlite(s) => {
            let conn = s.conn();
            let mut stmt = conn.prepare(state).expect("prepare");
            stmt.query_map([], |r| r.get::<_, Option<String>>(0))
                .expect("query")
                .map(|r| r.expect("row").unwrap_or_default())
                .collect()
        }
    };
    format!(
        "columns {} | rows {} | state {}",
        db.text(columns).await.unwrap_or_default(),
        db.text(rows).await.unwrap_or_default(),
        state_lines.join(" / ")
    )
}

fn restore(backup: &Path, database: Option<&str>) -> (i32, String, String) {
    let mut cmd = phased_cmd();
    cmd.arg("restore").arg(backup).arg("--yes");
    if let Some(url) = database {
        cmd.args(["--database", url]);
    }
    let out = cmd.output().expect("phased restore");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn refuses_a_backup_whose_checksum_record_cannot_be_read(db: TestDb) {
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, PLAN).expect("write plan");
    let url = db.url();
    let run = phased_cmd()
        .args(["run", "--database", &url])
        .arg(&plan)
        .output()
        .expect("phased run");
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let backups = dir.path().join("backups");
    let backup = std::fs::read_dir(&backups)
        .expect("the backup folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e != "json"))
        .expect("a backup was taken before contract");
    let sidecar = sidecar_of(&backup);
    let good = std::fs::read_to_string(&sidecar).expect("the backup's sidecar");
    let recorded: serde_json::Value = serde_json::from_str(&good).expect("sidecar JSON");
    let sha = recorded["backup"]["sha256"]
        .as_str()
        .expect("a recorded sha256")
        .to_string();
    let before = fingerprint(&db).await;
    assert!(before.starts_with("columns id |"), "contract ran: {before}");

    let without_sha = good.replace(&format!("\"sha256\": \"{sha}\","), "");
    assert_ne!(without_sha, good, "the sha256 line was taken out");
    let truncated = good[..good.len() / 2].to_string();
    let empty_sha = good.replace(&sha, "");
    // What takes the sidecar's place: text, or (None) a folder.
    let damaged: [(&str, Option<&str>); 4] = [
        ("not JSON", Some(&truncated)),
        ("no sha256", Some(&without_sha)),
        ("empty sha256", Some(&empty_sha)),
        ("a folder", None),
    ];
    for (how, content) in damaged {
        let _ = std::fs::remove_file(&sidecar);
        let _ = std::fs::remove_dir(&sidecar);
        match content {
            Some(text) => std::fs::write(&sidecar, text).expect("damage the sidecar"),
            None => std::fs::create_dir(&sidecar).expect("a folder in its place"),
        }
        for database in [Some(url.as_str()), None] {
            let (code, stdout, stderr) = restore(&backup, database);
            let case = format!(
                "sidecar {how}, {}",
                if database.is_some() {
                    "--database"
                } else {
                    "no --database"
                }
            );
            assert_eq!(
                code, 1,
                "{case}: restore was not refused:\n{stdout}\n{stderr}"
            );
            for needed in [
                backup.display().to_string(),
                sidecar.display().to_string(),
                "SHA-256".to_string(),
                "hint:".to_string(),
            ] {
                assert!(
                    stderr.contains(&needed),
                    "{case}: the refusal does not say `{needed}`:\n{stderr}"
                );
            }
            assert!(!stdout.contains("restored"), "{case}: {stdout}");
            assert_eq!(
                fingerprint(&db).await,
                before,
                "{case}: the refused restore changed the database"
            );
        }
    }

    // With its record put back, the same backup restores: the refusals above were the record's.
    let _ = std::fs::remove_dir(&sidecar);
    std::fs::write(&sidecar, &good).expect("put the sidecar back");
    let (code, stdout, stderr) = restore(&backup, Some(&url));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let after = fingerprint(&db).await;
    assert!(
        after.starts_with("columns id,email | rows 1,2 |"),
        "{after}"
    );
    assert!(after.ends_with("last_restore"), "{after}");
}

#[tokio::test]
async fn restore_refuses_a_backup_whose_checksum_record_cannot_be_read_on_sqlite() {
    refuses_a_backup_whose_checksum_record_cannot_be_read(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_backup_whose_checksum_record_cannot_be_read_on_postgres() {
    refuses_a_backup_whose_checksum_record_cannot_be_read(TestDb::pg().await).await;
}
