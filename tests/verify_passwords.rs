//! `phased verify` on PostgreSQL with a password in the database URL, percent-encoded in the user
//! part or given as `?password=`: the scratch copy's `pg_dump` and `psql` get the password,
//! decoded, through their environment only (never on their command line, where `ps` shows it),
//! and no output holds it.

use crate::common::{pg_admin_url, pg_connect, phased_cmd, real_tool, PgDb, Shims};

const PASSWORD: &str = "p@ss/w%rd";
const ENCODED: &str = "p%40ss%2Fw%25rd";

/// A login role of this test only, dropped (with any database it still owns) when the test ends.
struct Role {
    name: String,
}

impl Role {
    async fn create() -> Self {
        let name = format!(
            "phased_verify_pw_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let admin = pg_connect(&pg_admin_url())
            .await
            .unwrap_or_else(|e| panic!("connect as admin: {e}"));
        // CREATEDB: verify makes its scratch database on the same server.
        admin
            .batch_execute(&format!(
                "CREATE ROLE \"{name}\" LOGIN CREATEDB PASSWORD '{PASSWORD}'"
            ))
            .await
            .unwrap_or_else(|e| panic!("create role {name}: {e}"));
        Role { name }
    }

    /// `url` (the admin's, on some database) as this role with the password in the user part.
    fn url_with_userinfo(&self, url: &str) -> String {
        let rest = url.split_once('@').map(|(_, r)| r).unwrap_or_default();
        format!("postgres://{}:{ENCODED}@{rest}", self.name)
    }

    /// `url` as this role with the password as a query parameter.
    fn url_with_query(&self, url: &str) -> String {
        let rest = url.split_once('@').map(|(_, r)| r).unwrap_or_default();
        let sep = if rest.contains('?') { '&' } else { '?' };
        format!("postgres://{}@{rest}{sep}password={ENCODED}", self.name)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let name = self.name.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let Ok(admin) = pg_connect(&pg_admin_url()).await else {
                    return;
                };
                let owned = admin
                    .query(
                        "SELECT datname::text FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = $1",
                        &[&name],
                    )
                    .await
                    .unwrap_or_default();
                for row in owned {
                    let db: String = row.get(0);
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                        .await;
                }
                let _ = admin
                    .batch_execute(&format!("DROP ROLE IF EXISTS \"{name}\""))
                    .await;
            });
        });
        let _ = handle.join();
    }
}

const PLAN: &str = "plan: pw
phases:
  - name: expand
    kind: expand
    steps:
      - add_column: { table: accounts, name: email_lower, type: text }
      - create_index: { table: accounts, name: accounts_email_lower_idx, columns: [email_lower] }
  - name: contract
    kind: contract
    steps:
      - drop_column: { table: accounts, name: email }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_a_percent_encoded_or_query_password_through_the_environment_only() {
    // Declared first, dropped last: the test database goes before the role that owns it.
    let role = Role::create().await;
    let db = PgDb::new().await;
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" OWNER TO \"{}\"",
            db.name, role.name
        ))
        .await
        .expect("hand the test database to the role");
    let userinfo_url = role.url_with_userinfo(&db.url);
    let query_url = role.url_with_query(&db.url);
    // The role creates the table, so its schema-only dump is the role's to read.
    pg_connect(&userinfo_url)
        .await
        .unwrap_or_else(|e| panic!("connect as the role: {e}"))
        .batch_execute("CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL)")
        .await
        .expect("create accounts");

    let dir = tempfile::tempdir().expect("temp dir");
    let plan = dir.path().join("plan.yaml");
    std::fs::write(&plan, PLAN).expect("write plan");
    let shims = Shims::new();
    let log = shims.dir.path().join("argv.log");
    for tool in ["pg_dump", "psql"] {
        shims.add(
            tool,
            &format!(
                "for a in \"$@\"; do printf '%s\\n' \"{tool} arg $a\" >> '{log}'; done\n\
                 if [ \"$PGPASSWORD\" = '{PASSWORD}' ]; then echo \"{tool} env PGPASSWORD=decoded\" >> '{log}'; \
                 else echo \"{tool} env PGPASSWORD=other\" >> '{log}'; fi\n\
                 exec '{real}' \"$@\"\n",
                log = log.display(),
                real = real_tool(tool)
            ),
        );
    }

    for url in [&userinfo_url, &query_url] {
        let _ = std::fs::remove_file(&log);
        let out = phased_cmd()
            .env("PATH", shims.path())
            .env_remove("PGPASSWORD")
            .args(["verify", "--database", url])
            .arg(&plan)
            .output()
            .expect("phased verify");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let shown = url.replace(ENCODED, "<password>");
        for secret in [PASSWORD, ENCODED] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "verify on {shown} printed the password:\n{stdout}\n{stderr}"
            );
        }
        assert_eq!(
            out.status.code(),
            Some(0),
            "verify on {shown}:\n{stdout}\n{stderr}"
        );
        assert!(stdout.starts_with("verify passed"), "{stdout}");
        let argv = std::fs::read_to_string(&log).expect("the pg_dump and psql shims ran");
        let shown_argv = argv
            .replace(ENCODED, "<encoded>")
            .replace(PASSWORD, "<password>");
        for tool in ["pg_dump", "psql"] {
            assert!(
                argv.contains(&format!("{tool} env PGPASSWORD=decoded")),
                "{tool} did not get the decoded password in PGPASSWORD ({shown}):\n{shown_argv}"
            );
            assert!(
                !argv.contains(&format!("{tool} env PGPASSWORD=other")),
                "{shown}:\n{shown_argv}"
            );
        }
        for line in argv.lines().filter(|l| l.contains(" arg ")) {
            for secret in [PASSWORD, ENCODED, "password="] {
                assert!(
                    !line.contains(secret),
                    "a password reached a command line ({shown}):\n{shown_argv}"
                );
            }
        }
    }
    // The scratch databases are gone: the role owns no database but the test's own.
    let left = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = $1 AND d.datname <> $2",
            &[&role.name, &db.name],
        )
        .await
        .expect("count scratch databases")
        .get::<_, i64>(0);
    assert_eq!(left, 0, "a scratch database was left behind");
}
