//! The capturing proxy of `common::pg_capture`, against the real server: what tokio-postgres,
//! `psql` and the `phased` binary send is recorded exactly, TLS and GSSAPI requests are refused
//! so sessions stay decodable, and `stop` ends the listener and the sessions.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::NoTls;

use crate::common::pg_capture::{upstream_of, CapturedConnection, PgCapture, Protocol};
use crate::common::{pg_connect, phased_cmd, real_tool, PgDb};

/// Generous: only a broken proxy or server gets near it.
const PATIENCE: Duration = Duration::from_secs(30);

use Protocol::{Extended, Simple};

fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// The one connection with this application_name.
fn connection_of(capture: &PgCapture, app: &str) -> CapturedConnection {
    let mut found: Vec<_> = capture
        .connections()
        .into_iter()
        .filter(|c| c.application_name() == Some(app))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one connection named {app}: {:#?}",
        capture.connections()
    );
    found.remove(0)
}

fn wait_closed(capture: &PgCapture, app: &str) {
    capture.wait_for(PATIENCE, |conns| {
        conns
            .iter()
            .any(|c| c.application_name() == Some(app) && c.closed)
    });
}

#[tokio::test]
async fn pg_capture_records_what_tokio_postgres_sends() {
    let db = PgDb::new().await;
    let capture = PgCapture::start_for_url(&db.url);
    let url = capture.url(&with_param(&db.url, "application_name=capture_tokio"));
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect through the proxy ({url}): {e}"));
    let connection = tokio::spawn(connection);

    let rows = client
        .simple_query("SELECT 1 AS one")
        .await
        .expect("simple");
    let one = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
        _ => None,
    });
    assert_eq!(one, Some("1"));
    for n in [41, 99] {
        let row = client
            .query_one("SELECT $1::int4 + 1", &[&n])
            .await
            .expect("query_one");
        assert_eq!(row.get::<_, i32>(0), n + 1);
    }
    let stmt = client
        .prepare("SELECT $1::text || '!'")
        .await
        .expect("prepare");
    for s in ["a", "b"] {
        let row = client.query_one(&stmt, &[&s]).await.expect("prepared");
        assert_eq!(row.get::<_, String>(0), format!("{s}!"));
    }
    drop(stmt);
    let rows = client
        .query_typed("SELECT $1::int8 * 2", &[(&21i64, Type::INT8)])
        .await
        .expect("query_typed");
    assert_eq!(rows[0].get::<_, i64>(0), 42);
    client
        .batch_execute("CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .expect("batch");
    let mut client = client;
    let tx = client.transaction().await.expect("begin");
    tx.execute("INSERT INTO t VALUES ($1)", &[&2i32])
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 2);

    // No waiting: each statement was recorded before it was forwarded.
    let conn = connection_of(&capture, "capture_tokio");
    assert_eq!(
        conn.keys(),
        vec![
            (Simple, "SELECT 1 AS one"),
            (Extended, "SELECT $1::int4 + 1"),
            (Extended, "SELECT $1::int4 + 1"),
            (Extended, "SELECT $1::text || '!'"),
            (Extended, "SELECT $1::text || '!'"),
            (Extended, "SELECT $1::int8 * 2"),
            (
                Simple,
                "CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (1)"
            ),
            (Simple, "START TRANSACTION"),
            (Extended, "INSERT INTO t VALUES ($1)"),
            (Simple, "COMMIT"),
            (Extended, "SELECT count(*) FROM t"),
        ]
    );
    // `query` parses every time; a prepared statement once however often it runs.
    assert_eq!(
        conn.parsed,
        vec![
            "SELECT $1::int4 + 1",
            "SELECT $1::int4 + 1",
            "SELECT $1::text || '!'",
            "SELECT $1::int8 * 2",
            "INSERT INTO t VALUES ($1)",
            "SELECT count(*) FROM t",
        ]
    );
    let seqs: Vec<u64> = conn.received.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..11).collect::<Vec<_>>(), "arrival order");
    let (config, _) = phased::db::postgres::tls::parse(&db.url).expect("the test URL");
    assert_eq!(conn.user(), config.get_user());
    assert_eq!(conn.database(), Some(db.name.as_str()));
    assert!(!conn.ssl_requested, "sslmode=disable asks for no TLS");
    assert_eq!(conn.error, None);
    assert!(!conn.closed);
    assert_eq!(
        capture.statements_of_app("capture_tokio"),
        conn.received,
        "statements_of selects by connection"
    );

    drop(client);
    connection
        .await
        .expect("the connection task")
        .expect("the connection ends cleanly");
    wait_closed(&capture, "capture_tokio");
}

#[tokio::test]
async fn pg_capture_records_what_psql_sends() {
    let db = PgDb::new().await;
    let capture = PgCapture::start_for_url(&db.url);
    let url = capture.url(&db.url);
    let output = std::process::Command::new(real_tool("psql"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", "SELECT 1 AS one", "-c", "SELECT 'a'; SELECT 'b'"])
        .arg(&url)
        .env("PGAPPNAME", "capture_psql")
        .env("PGCONNECT_TIMEOUT", "30")
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql through the proxy: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1\na\nb\n");
    let conn = connection_of(&capture, "capture_psql");
    assert_eq!(
        conn.keys(),
        vec![
            (Simple, "SELECT 1 AS one"),
            (Simple, "SELECT 'a'; SELECT 'b'")
        ]
    );
    assert_eq!(conn.database(), Some(db.name.as_str()));
    assert!(conn.parsed.is_empty());
    // psql sends Terminate and closes; the proxy notices on its own time.
    wait_closed(&capture, "capture_psql");
}

#[tokio::test]
async fn pg_capture_refuses_tls_and_gssapi_encryption() {
    let db = PgDb::new().await;
    let capture = PgCapture::start_for_url(&db.url);

    // phased's own connector with sslmode=prefer: asks for TLS, is refused, goes on in plaintext.
    let url = capture
        .url(&with_param(&db.url, "application_name=capture_prefer"))
        .replace("sslmode=disable", "sslmode=prefer");
    let client = pg_connect(&url)
        .await
        .unwrap_or_else(|e| panic!("sslmode=prefer through the proxy: {e}"));
    client.batch_execute("SELECT 2").await.expect("query");
    let conn = connection_of(&capture, "capture_prefer");
    assert!(conn.ssl_requested, "{conn:#?}");
    assert_eq!(conn.keys(), vec![(Simple, "SELECT 2")]);

    // A GSSENCRequest by hand, then the real startup packet on the same socket.
    let mut raw = TcpStream::connect(capture.addr()).expect("connect to the proxy");
    raw.set_read_timeout(Some(PATIENCE)).expect("timeout");
    raw.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .expect("GSSENCRequest");
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).expect("the answer");
    assert_eq!(&answer, b"N");
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in [
        ("user", "postgres"),
        ("database", db.name.as_str()),
        ("application_name", "capture_raw"),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    raw.write_all(&packet).expect("startup");
    raw.read_exact(&mut answer).expect("the server's answer");
    assert_eq!(
        &answer, b"R",
        "an Authentication message (the tests use a postgres user that needs no password)"
    );
    raw.write_all(&[b'X', 0, 0, 0, 4]).expect("Terminate");
    wait_closed(&capture, "capture_raw");
    let conn = connection_of(&capture, "capture_raw");
    assert!(conn.gssenc_requested && !conn.ssl_requested, "{conn:#?}");
    assert_eq!(conn.database(), Some(db.name.as_str()));
    assert!(conn.received.is_empty());
}

#[tokio::test]
async fn pg_capture_sees_the_phased_binary() {
    let db = PgDb::new().await;
    let capture = PgCapture::start_for_url(&db.url);
    let output = phased_cmd()
        .args(["flags", "--database", &capture.url(&db.url)])
        .output()
        .expect("run phased");
    assert!(
        output.status.success(),
        "phased flags through the proxy: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let statements = capture.statements_of_app("phased/flags");
    assert!(
        !statements.is_empty(),
        "phased's statements: {:#?}",
        capture.connections()
    );
    assert!(
        capture
            .connections()
            .iter()
            .all(|c| c.application_name() == Some("phased/flags") && c.error.is_none()),
        "{:#?}",
        capture.connections()
    );
}

#[tokio::test]
async fn pg_capture_stop_ends_the_listener_and_open_sessions() {
    let db = PgDb::new().await;
    let mut capture = PgCapture::start_for_url(&db.url);
    let url = capture.url(&db.url);
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("connect through the proxy");
    let connection = tokio::spawn(connection);
    client.batch_execute("SELECT 3").await.expect("query");

    capture.stop();
    assert!(
        TcpStream::connect(capture.addr()).is_err(),
        "the listener is closed"
    );
    assert!(client.batch_execute("SELECT 4").await.is_err());
    let _ = connection.await.expect("the connection task");
    let conns = capture.connections();
    assert_eq!(conns.len(), 1, "{conns:#?}");
    assert!(conns[0].closed);
    assert_eq!(conns[0].keys(), vec![(Simple, "SELECT 3")]);
    capture.stop();
}

#[test]
fn pg_capture_url_points_at_the_proxy() {
    let capture = PgCapture::start("127.0.0.1:5432");
    let port = capture.port();
    assert_eq!(
        capture.url("postgres://postgres@127.0.0.1:5432/postgres"),
        format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable")
    );
    assert_eq!(
        capture.url(
            "postgresql://app:p%40ss@db.example:6543/prod?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x"
        ),
        format!("postgresql://app:p%40ss@127.0.0.1:{port}/prod?application_name=x&sslmode=disable")
    );
    assert_eq!(
        capture.url("postgres://db.example/prod?user=a&host=other&port=1"),
        format!("postgres://127.0.0.1:{port}/prod?user=a&sslmode=disable")
    );
    assert_eq!(
        upstream_of("postgres://u@db.example:6543/d"),
        "db.example:6543"
    );
    assert_eq!(upstream_of("postgres://u@[::1]/d"), "[::1]:5432");
    assert!(capture.connections().is_empty());
}
