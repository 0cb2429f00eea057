//! `drop_column` on a column that indexes (and, on PostgreSQL, constraints) involve: both
//! dialects drop those explicitly, by name, in the step's transaction, and `phased plan` shows
//! which go with the column. Before, PostgreSQL dropped them silently and SQLite refused.

use crate::common::{phased_cmd, TestDb};

fn plan_yaml(with_check: bool) -> String {
    let check = if with_check {
        "      - add_check: { table: t, name: t_a_positive, expression: \"a > 0\" }\n"
    } else {
        ""
    };
    format!(
        r#"plan: dc
phases:
  - name: expand
    kind: expand
    steps:
      - create_table:
          name: t
          columns:
            - {{ name: id, type: bigint, primary_key: true }}
            - {{ name: a, type: integer }}
            - {{ name: b, type: text }}
      - create_index: {{ table: t, name: t_a_idx, columns: [a] }}
      - create_index: {{ table: t, name: t_b_a_idx, columns: [b, a] }}
      - create_index: {{ table: t, name: t_b_idx, columns: [b] }}
{check}  - name: contract
    kind: contract
    steps:
      - drop_column: {{ table: t, name: a }}
"#
    )
}

async fn drops_the_indexes_that_go_with_the_column(db: TestDb, with_check: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, plan_yaml(with_check)).expect("write the plan");
    phased_cmd()
        .arg("run")
        .arg(&file)
        .args(["--database", &db.url(), "--until", "expand"])
        .assert()
        .success();
    db.execute("INSERT INTO t (id, a, b) VALUES (1, 1, 'x'), (2, 2, 'y')")
        .await;

    let out = phased_cmd()
        .arg("plan")
        .arg(&file)
        .args(["--database", &db.url()])
        .output()
        .expect("phased plan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    for gone in ["t_a_idx", "t_b_a_idx"] {
        assert!(
            shown.contains("DROP INDEX") && shown.contains(&format!("\"{gone}\"")),
            "plan shows that {gone} goes with the column:\n{shown}"
        );
    }
    assert!(
        !shown.contains("\"t_b_idx\""),
        "an index without the column stays out of it:\n{shown}"
    );
    if with_check {
        assert!(
            shown.contains("DROP CONSTRAINT \"t_a_positive\""),
            "plan shows the constraint that goes with the column:\n{shown}"
        );
    }

    let run = phased_cmd()
        .arg("run")
        .arg(&file)
        .args(["--database", &db.url()])
        .output()
        .expect("phased run");
    assert!(
        run.status.success(),
        "the drop succeeds on both dialects:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!db.has_column("t", "a").await);
    assert!(!db.has_index("t_a_idx").await);
    assert!(!db.has_index("t_b_a_idx").await);
    assert!(db.has_index("t_b_idx").await, "the index on b alone stays");
    assert_eq!(db.scalar("SELECT count(*) FROM t").await, 2);
}

#[tokio::test]
async fn drop_column_drops_its_indexes_and_constraints_by_name_on_postgres() {
    drops_the_indexes_that_go_with_the_column(TestDb::pg().await, true).await;
}

#[tokio::test]
async fn drop_column_drops_its_indexes_by_name_on_sqlite() {
    drops_the_indexes_that_go_with_the_column(TestDb::sqlite(), false).await;
}
