//! TLS to PostgreSQL with libpq's `sslmode` meanings, against the real server's certificate:
//! `require` encrypts, `verify-ca` checks the chain, `verify-full` also the host name, and
//! `pg_dump` is handed the same settings for backups.

use std::net::ToSocketAddrs;
use std::path::PathBuf;

use x509_cert::der::DecodePem;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

use crate::common::*;

/// The server's own certificate (trusted as its root: it is self-signed, as Debian's
/// `ssl-cert-snakeoil` is), the name it is valid for, and the server's address.
struct ServerCert {
    file: PathBuf,
    name: String,
    addr: String,
}

async fn server_cert(db: &PgDb) -> ServerCert {
    let client = db.client().await;
    let show = |name: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_else(|e| panic!("SHOW {name}: {e} (the TLS tests need a superuser)"))
        }
    };
    assert_eq!(
        show("ssl").await,
        "on",
        "the TLS tests need a server with ssl = on (Debian's clusters have it, with the \
         ssl-cert-snakeoil certificate)"
    );
    let mut file = PathBuf::from(show("ssl_cert_file").await);
    if file.is_relative() {
        file = PathBuf::from(show("data_directory").await).join(file);
    }
    let pem = std::fs::read(&file).unwrap_or_else(|e| {
        panic!(
            "the TLS tests trust the server's own certificate and read it from {} ({e}): \
             run them on the server's machine",
            file.display()
        )
    });
    let cert = Certificate::from_pem(&pem).expect("the server's certificate is PEM");
    let san = cert
        .tbs_certificate
        .get::<SubjectAltName>()
        .expect("the certificate's extensions decode")
        .and_then(|(_, san)| {
            san.0.into_iter().find_map(|n| match n {
                GeneralName::DnsName(name) => Some(name.as_str().to_string()),
                _ => None,
            })
        });
    let name = san.unwrap_or_else(|| {
        let subject = cert.tbs_certificate.subject.to_string();
        subject
            .split(',')
            .find_map(|part| part.trim().strip_prefix("CN=").map(str::to_string))
            .unwrap_or_else(|| panic!("the server's certificate names no host: {subject}"))
    });
    let (config, _) = phased::db::postgres::tls::parse(&db.url).expect("test URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => panic!("the TLS tests need a TCP server URL, not a socket"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {host}"))
        .ip()
        .to_string();
    ServerCert { file, name, addr }
}

/// The test database's URL reached at the server's address under `host` (the name TLS checks),
/// with `params` added.
fn url_as(db: &PgDb, host: &str, addr: &str, params: &str) -> String {
    let (config, _) = phased::db::postgres::tls::parse(&db.url).expect("test URL");
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| {
            let p = String::from_utf8_lossy(p);
            format!(
                ":{}",
                percent_encoding::utf8_percent_encode(&p, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{user}{password}@{host}:{port}/{}?hostaddr={addr}&{params}",
        db.name
    )
}

/// A plan whose first step records whether its own session is encrypted, and whose contract
/// phase is backed up first (pg_dump, connecting with the same TLS settings).
const PLAN: &str = r#"plan: tls
backup:
  before: [contract]
  dir: backups
phases:
  - name: expand
    kind: expand
    steps:
      - sql:
          up: "CREATE TABLE seen AS SELECT ssl, version AS tls FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
          down: DROP TABLE seen
      - add_column: { table: seen, name: extra, type: text }
  - name: contract
    kind: contract
    steps:
      - drop_column: { table: seen, name: extra }
"#;

fn plan_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, PLAN).expect("write plan");
    let file = file.to_str().expect("utf-8 path").to_string();
    (dir, file)
}

async fn session_was_encrypted(db: &PgDb) -> bool {
    boolean(db, "SELECT ssl FROM seen").await
}

async fn boolean(db: &PgDb, sql: &str) -> bool {
    db.client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn run(plan: &str, url: &str) -> std::process::Output {
    phased_cmd()
        .args(["run", plan, "--database", url])
        .output()
        .expect("run phased")
}

/// A pg_dump that first opens a session of its own with the environment phased gave it, logs
/// that environment's TLS settings and whether the session is encrypted, then runs the real one.
/// (phased's version check runs it without a database: that call is passed straight through.)
fn pg_dump_reporting_tls(shims: &Shims, log: &std::path::Path) {
    shims.add(
        "pg_dump",
        &format!(
            "[ -n \"$PGDATABASE\" ] || exec '{real}' \"$@\"\n\
             ssl=$('{psql}' -XAt -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>&1)\n\
             printf '%s %s %s\\n' \"$PGSSLMODE\" \"$PGHOSTADDR\" \"$ssl\" >> '{log}'\n\
             exec '{real}' \"$@\"\n",
            psql = real_tool("psql"),
            log = log.display(),
            real = real_tool("pg_dump"),
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_encrypts_and_disable_does_not() {
    let encrypted = PgDb::new().await;
    let cert = server_cert(&encrypted).await;
    let (_dir, plan) = plan_dir();
    let url = url_as(&encrypted, &cert.addr, &cert.addr, "sslmode=require");
    let out = run(&plan, &url);
    assert!(out.status.success(), "{out:?}");
    assert!(session_was_encrypted(&encrypted).await);

    let plain = PgDb::new().await;
    let (_dir, plan) = plan_dir();
    let url = url_as(&plain, &cert.addr, &cert.addr, "sslmode=disable");
    let out = run(&plan, &url);
    assert!(out.status.success(), "{out:?}");
    assert!(!session_was_encrypted(&plain).await);
}

/// verify-full against the server's name and root: the plan runs encrypted and its backup's
/// pg_dump connects with the same checks (PGSSLMODE, PGSSLROOTCERT, PGHOSTADDR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_runs_a_plan_and_its_backup_over_a_checked_connection() {
    let db = PgDb::new().await;
    let cert = server_cert(&db).await;
    let (dir, plan) = plan_dir();
    let url = url_as(
        &db,
        &cert.name,
        &cert.addr,
        &format!("sslmode=verify-full&sslrootcert={}", cert.file.display()),
    );
    let shims = Shims::new();
    let log = shims.dir.path().join("pg_dump.log");
    pg_dump_reporting_tls(&shims, &log);
    let out = phased_cmd()
        .env("PATH", shims.path())
        .env_remove("PHASED_PG_BIN")
        .args(["run", &plan, "--database", &url])
        .output()
        .expect("run phased");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(session_was_encrypted(&db).await);
    assert_eq!(
        std::fs::read_to_string(&log).expect("pg_dump ran"),
        format!("verify-full {} t\n", cert.addr),
        "pg_dump's libpq got sslmode=verify-full, the server's address, and an encrypted session"
    );
    let extra = "SELECT EXISTS (SELECT FROM information_schema.columns WHERE table_name = 'seen' AND column_name = 'extra')";
    assert!(!boolean(&db, extra).await, "contract ran");
    let backups: Vec<_> = std::fs::read_dir(dir.path().join("backups"))
        .expect("the backup folder")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "dump"))
        .collect();
    assert_eq!(backups.len(), 1, "one pg_dump backup before contract");
}

/// A certificate for another name, or from another root, stops the run before anything runs,
/// and says why; verify-ca does not compare the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_refuses_a_wrong_name_or_root_and_verify_ca_ignores_the_name() {
    let db = PgDb::new().await;
    let cert = server_cert(&db).await;
    let (_dir, plan) = plan_dir();
    let root = format!("sslrootcert={}", cert.file.display());

    let wrong_name = url_as(
        &db,
        "not-the-server.invalid",
        &cert.addr,
        &format!("sslmode=verify-full&{root}"),
    );
    let out = run(&plan, &wrong_name);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect to"), "{stderr}");
    assert!(
        stderr.contains("not valid for name \"not-the-server.invalid\""),
        "{stderr}"
    );

    let other_root = repo_root().join("tests/fixtures/tls/other-root.pem");
    let wrong_root = url_as(
        &db,
        &cert.name,
        &cert.addr,
        &format!("sslmode=verify-full&sslrootcert={}", other_root.display()),
    );
    let out = run(&plan, &wrong_root);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    // libpq: with a root certificate given, `require` checks the chain as verify-ca does.
    let require_with_root = url_as(
        &db,
        &cert.addr,
        &cert.addr,
        &format!("sslmode=require&sslrootcert={}", other_root.display()),
    );
    let out = run(&plan, &require_with_root);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(
        !boolean(&db, "SELECT to_regclass('seen') IS NOT NULL").await,
        "nothing ran"
    );

    let missing_root = url_as(
        &db,
        &cert.name,
        &cert.addr,
        "sslmode=verify-ca&sslrootcert=/nonexistent/root.pem",
    );
    let out = run(&plan, &missing_root);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read sslrootcert /nonexistent/root.pem"),
        "{stderr}"
    );

    let any_name = url_as(
        &db,
        "not-the-server.invalid",
        &cert.addr,
        &format!("sslmode=verify-ca&{root}"),
    );
    let out = run(&plan, &any_name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(session_was_encrypted(&db).await);
}
