//! A PostgreSQL wire-protocol capturing proxy: a test points a client (tokio-postgres, `psql`,
//! the `phased` binary) at [`PgCapture::url`] and afterwards reads which SQL statements
//! PostgreSQL received, per connection and in order.
//!
//! Bytes are piped both ways unchanged, except that TLS and GSSAPI encryption requests are
//! refused by the proxy itself (it answers `N`), so every session continues in plaintext and the
//! client→server stream can be decoded:
//! - the startup packet's parameters (`user`, `database`, `application_name`, …);
//! - `Q` (simple query): one [`Received`] per message, its text as sent — a `batch_execute` of
//!   several statements is one entry (splitting SQL on `;` correctly needs a lexer for quotes,
//!   dollar quotes, comments and `BEGIN ATOMIC` bodies, so that is left to the caller);
//! - `P` Parse / `B` Bind / `E` Execute (extended protocol): one [`Received`] per executed Bind,
//!   with the text of the statement it bound. A Parse never executed (`prepare` alone) is not a
//!   received statement, but every Parse's text is kept in [`CapturedConnection::parsed`].
//!
//! A message is recorded before it is forwarded, so once a client has PostgreSQL's answer to a
//! statement, the capture already holds it: no waiting is needed to read it. "Received" means
//! the server was sent it, not that it succeeded.
//!
//! Blocking std sockets and threads: it works the same under `#[test]` and `#[tokio::test]`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PROTOCOL_MAJOR_3: u32 = 3;
const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;
/// Startup-phase packets are small; anything bigger is not PostgreSQL's protocol.
const MAX_STARTUP_LEN: usize = 10_000;

/// How a statement reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A `Q` message (`simple_query`, `batch_execute`, tokio-postgres' BEGIN/COMMIT, `psql -c`).
    Simple,
    /// Parse + Bind + Execute (`query`, `execute` and friends, with or without parameters).
    Extended,
}

/// One statement PostgreSQL received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The order of arrival across all connections of this capture (0, 1, 2, …).
    pub seq: u64,
    /// The SQL text as sent (for `Q`, possibly several statements).
    pub sql: String,
    pub protocol: Protocol,
}

impl Received {
    /// `(protocol, sql)`, for comparing sequences without the arrival numbers.
    pub fn key(&self) -> (Protocol, &str) {
        (self.protocol, self.sql.as_str())
    }
}

/// One client connection through the proxy.
#[derive(Debug, Clone, Default)]
pub struct CapturedConnection {
    /// Accept order: 0 for the first connection.
    pub id: usize,
    /// The startup packet's parameters (`user`, `database`, `application_name`, …), as sent.
    pub params: BTreeMap<String, String>,
    /// The client asked for TLS (SSLRequest) and was refused.
    pub ssl_requested: bool,
    /// The client asked for GSSAPI encryption (GSSENCRequest) and was refused.
    pub gssenc_requested: bool,
    /// A CancelRequest connection (forwarded unchanged; it carries no statements).
    pub cancel_request: bool,
    /// The statements received, in order.
    pub received: Vec<Received>,
    /// The text of every Parse message, in order, executed or not.
    pub parsed: Vec<String>,
    /// The upstream could not be reached, or the stream could not be decoded (then the rest
    /// was piped undecoded).
    pub error: Option<String>,
    /// Both directions have ended.
    pub closed: bool,
}

impl CapturedConnection {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    pub fn application_name(&self) -> Option<&str> {
        self.param("application_name")
    }

    pub fn user(&self) -> Option<&str> {
        self.param("user")
    }

    /// The `database` parameter (PostgreSQL defaults it to the user when absent).
    pub fn database(&self) -> Option<&str> {
        self.param("database").or_else(|| self.user())
    }

    /// The SQL texts received, in order.
    pub fn sql(&self) -> Vec<&str> {
        self.received.iter().map(|r| r.sql.as_str()).collect()
    }

    /// `(protocol, sql)` of each statement received, in order.
    pub fn keys(&self) -> Vec<(Protocol, &str)> {
        self.received.iter().map(Received::key).collect()
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    connections: Vec<CapturedConnection>,
    next_seq: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking proxy thread must not hide what was captured.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, id: usize, f: impl FnOnce(&mut CapturedConnection)) {
        let mut state = self.lock();
        if let Some(conn) = state.connections.get_mut(id) {
            f(conn);
        }
        drop(state);
        self.changed.notify_all();
    }

    fn record(&self, id: usize, sql: String, protocol: Protocol) {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        if let Some(conn) = state.connections.get_mut(id) {
            conn.received.push(Received { seq, sql, protocol });
        }
        drop(state);
        self.changed.notify_all();
    }
}

struct Session {
    client: TcpStream,
    thread: JoinHandle<()>,
}

/// The proxy: listens on 127.0.0.1, one upstream connection per client connection.
pub struct PgCapture {
    addr: SocketAddr,
    upstream: String,
    shared: Arc<Shared>,
    sessions: Arc<Mutex<Vec<Session>>>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl PgCapture {
    /// Starts a proxy in front of `upstream` (`host:port`).
    pub fn start(upstream: &str) -> PgCapture {
        let resolves = upstream
            .to_socket_addrs()
            .map(|mut addrs| addrs.next().is_some())
            .unwrap_or(false);
        assert!(
            resolves,
            "pg_capture: the upstream `{upstream}` is not a host:port that resolves"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("pg_capture: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("pg_capture: the listener's address");
        let shared = Arc::new(Shared::default());
        let sessions: Arc<Mutex<Vec<Session>>> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (upstream, shared, sessions, stopping) = (
                upstream.to_string(),
                shared.clone(),
                sessions.clone(),
                stopping.clone(),
            );
            std::thread::Builder::new()
                .name("pg_capture accept".into())
                .spawn(move || accept_loop(listener, upstream, shared, sessions, stopping))
                .expect("pg_capture: spawn the accept thread")
        };
        PgCapture {
            addr,
            upstream: upstream.to_string(),
            shared,
            sessions,
            stopping,
            acceptor: Some(acceptor),
        }
    }

    /// Starts a proxy in front of the server a `postgres://` URL names (TCP hosts only).
    pub fn start_for_url(url: &str) -> PgCapture {
        PgCapture::start(&upstream_of(url))
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `base_url` with its host and port replaced by the proxy's and `sslmode=disable` (user,
    /// password, database and other parameters kept; `host`, `hostaddr`, `port` and the other
    /// `ssl*` parameters dropped, as they would bypass or contradict the proxy).
    pub fn url(&self, base_url: &str) -> String {
        proxy_url(base_url, self.addr.port())
    }

    /// The connections so far, in accept order.
    pub fn connections(&self) -> Vec<CapturedConnection> {
        self.shared.lock().connections.clone()
    }

    /// The statements received on the connections `pred` selects, in order of arrival.
    pub fn statements_of(&self, pred: impl Fn(&CapturedConnection) -> bool) -> Vec<Received> {
        let state = self.shared.lock();
        let mut all: Vec<Received> = state
            .connections
            .iter()
            .filter(|c| pred(c))
            .flat_map(|c| c.received.iter().cloned())
            .collect();
        all.sort_by_key(|r| r.seq);
        all
    }

    /// The statements received on connections whose `application_name` is `name`.
    pub fn statements_of_app(&self, name: &str) -> Vec<Received> {
        self.statements_of(|c| c.application_name() == Some(name))
    }

    /// Waits until `pred` holds for the connections (checked on every change), and returns
    /// them; panics with what was captured after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[CapturedConnection]) -> bool,
    ) -> Vec<CapturedConnection> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if pred(&state.connections) {
                return state.connections.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "pg_capture: the condition did not hold within {timeout:?}; captured: {:#?}",
                    state.connections
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops accepting and closes the sessions still open (their clients see the connection
    /// end). Idempotent; Drop calls it.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            // Wake the blocking accept(); if even that fails, leave the thread be rather than
            // hang on it.
            if TcpStream::connect(self.addr).is_ok() {
                let _ = acceptor.join();
            }
        }
        let sessions =
            std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|e| e.into_inner()));
        for session in &sessions {
            let _ = session.client.shutdown(Shutdown::Both);
        }
        for session in sessions {
            let _ = session.thread.join();
        }
    }

    /// The upstream this proxy forwards to.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }
}

impl Drop for PgCapture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `host:port` of the server a `postgres://` URL names.
pub fn upstream_of(url: &str) -> String {
    let (config, _) = phased::db::postgres::tls::parse(url)
        .unwrap_or_else(|e| panic!("pg_capture: cannot read the URL: {e}"));
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        None => "localhost".to_string(),
        #[allow(unreachable_patterns)]
        Some(_) => panic!("pg_capture proxies TCP only; the URL names a socket directory"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn proxy_url(base_url: &str, port: u16) -> String {
    let (scheme, rest) = base_url
        .split_once("://")
        .unwrap_or_else(|| panic!("pg_capture: not a postgres:// URL: {base_url}"));
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    // The password may hold an encoded `@` only (`%40`), so the last `@` ends the user info.
    let userinfo = authority.rfind('@').map_or("", |i| &authority[..=i]);
    const DROPPED: &[&str] = &[
        "host",
        "hostaddr",
        "port",
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslnegotiation",
        "gssencmode",
    ];
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| !DROPPED.contains(&p.split_once('=').map_or(*p, |(k, _)| k)))
        .collect();
    params.push("sslmode=disable");
    format!(
        "{scheme}://{userinfo}127.0.0.1:{port}{path}?{}",
        params.join("&")
    )
}

fn accept_loop(
    listener: TcpListener,
    upstream: String,
    shared: Arc<Shared>,
    sessions: Arc<Mutex<Vec<Session>>>,
    stopping: Arc<AtomicBool>,
) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = stream else { continue };
        let Ok(client_handle) = client.try_clone() else {
            continue;
        };
        let id = {
            let mut state = shared.lock();
            let id = state.connections.len();
            state.connections.push(CapturedConnection {
                id,
                ..Default::default()
            });
            id
        };
        shared.changed.notify_all();
        let (upstream, shared2) = (upstream.clone(), shared.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("pg_capture session {id}"))
            .spawn(move || session(id, client, &upstream, &shared2));
        match spawned {
            Ok(thread) => sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Session {
                    client: client_handle,
                    thread,
                }),
            Err(e) => {
                let _ = client_handle.shutdown(Shutdown::Both);
                shared.update(id, |c| {
                    c.error = Some(format!("cannot start a session thread: {e}"));
                    c.closed = true;
                });
            }
        }
    }
}

/// One client connection: pipes server→client on a second thread, decodes client→server here.
fn session(id: usize, client: TcpStream, upstream: &str, shared: &Shared) {
    let _ = client.set_nodelay(true);
    let server = match connect(upstream) {
        Ok(s) => s,
        Err(e) => {
            let _ = client.shutdown(Shutdown::Both);
            shared.update(id, |c| {
                c.error = Some(format!("cannot connect to the upstream {upstream}: {e}"));
                c.closed = true;
            });
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let back = match (server.try_clone(), client.try_clone()) {
        (Ok(mut from), Ok(mut to)) => std::thread::Builder::new()
            .name(format!("pg_capture session {id} back"))
            .spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
            })
            .map_err(|e| e.to_string()),
        (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
    };
    let result = match &back {
        Ok(_) => forward(id, &client, &server, shared),
        Err(e) => Err(format!("cannot start the server→client pipe: {e}")),
    };
    let _ = server.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
    if let Ok(thread) = back {
        let _ = thread.join();
    }
    shared.update(id, |c| {
        if let Err(e) = result {
            c.error.get_or_insert(e);
        }
        c.closed = true;
    });
}

fn connect(upstream: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in upstream.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
}

/// The extended protocol's state on one connection.
#[derive(Default)]
struct Extended {
    /// Prepared statement name ("" = unnamed) → its SQL.
    statements: HashMap<String, String>,
    /// Portal name → the SQL bound into it, and whether an Execute has been recorded for this
    /// Bind (a suspended portal resumed by a second Execute is the same statement).
    portals: HashMap<String, (String, bool)>,
}

/// Reads the client→server stream, records, forwards. Ok at a clean end of stream.
fn forward(
    id: usize,
    client: &TcpStream,
    server: &TcpStream,
    shared: &Shared,
) -> Result<(), String> {
    let mut reader = BufReader::new(client);
    let mut to_client = client;
    let mut to_server = server;
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");

    // The startup phase: untyped packets (length, code, body).
    loop {
        let mut len = [0u8; 4];
        if !read_or_eof(&mut reader, &mut len).map_err(|e| io("read the startup packet", e))? {
            return Ok(());
        }
        let len = u32::from_be_bytes(len) as usize;
        if !(8..=MAX_STARTUP_LEN).contains(&len) {
            to_server
                .write_all(&(len as u32).to_be_bytes())
                .map_err(|e| io("forward", e))?;
            return pipe_raw(
                reader,
                to_server,
                format!("a startup packet of length {len}"),
            );
        }
        let mut packet = vec![0u8; len];
        packet[..4].copy_from_slice(&(len as u32).to_be_bytes());
        reader
            .read_exact(&mut packet[4..])
            .map_err(|e| io("read the startup packet", e))?;
        let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                shared.update(id, |c| {
                    if code == SSL_REQUEST {
                        c.ssl_requested = true;
                    } else {
                        c.gssenc_requested = true;
                    }
                });
                to_client
                    .write_all(b"N")
                    .map_err(|e| io("refuse encryption", e))?;
            }
            CANCEL_REQUEST => {
                shared.update(id, |c| c.cancel_request = true);
                to_server.write_all(&packet).map_err(|e| io("forward", e))?;
                return pipe_raw(reader, to_server, String::new());
            }
            _ if code >> 16 == PROTOCOL_MAJOR_3 => {
                let params = startup_params(&packet[8..]);
                shared.update(id, |c| c.params = params);
                to_server.write_all(&packet).map_err(|e| io("forward", e))?;
                break;
            }
            _ => {
                to_server.write_all(&packet).map_err(|e| io("forward", e))?;
                return pipe_raw(reader, to_server, format!("startup code {code}"));
            }
        }
    }

    // Typed messages: type byte, length (including itself), body.
    let mut extended = Extended::default();
    loop {
        let mut header = [0u8; 5];
        if !read_or_eof(&mut reader, &mut header).map_err(|e| io("read a message", e))? {
            return Ok(());
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len < 4 {
            to_server.write_all(&header).map_err(|e| io("forward", e))?;
            return pipe_raw(
                reader,
                to_server,
                format!("message {:?} of length {len}", header[0] as char),
            );
        }
        let mut message = Vec::with_capacity(1 + len);
        message.extend_from_slice(&header);
        message.resize(1 + len, 0);
        reader
            .read_exact(&mut message[5..])
            .map_err(|e| io("read a message", e))?;
        decode(id, header[0], &message[5..], &mut extended, shared);
        to_server
            .write_all(&message)
            .map_err(|e| io("forward", e))?;
    }
}

/// Records what one client message carries.
fn decode(id: usize, kind: u8, body: &[u8], extended: &mut Extended, shared: &Shared) {
    let mut fields = Fields(body);
    match kind {
        b'Q' => {
            if let Some(sql) = fields.cstr() {
                shared.record(id, sql, Protocol::Simple);
            }
        }
        b'P' => {
            if let (Some(name), Some(sql)) = (fields.cstr(), fields.cstr()) {
                shared.update(id, |c| c.parsed.push(sql.clone()));
                extended.statements.insert(name, sql);
            }
        }
        b'B' => {
            if let (Some(portal), Some(statement)) = (fields.cstr(), fields.cstr()) {
                match extended.statements.get(&statement) {
                    Some(sql) => {
                        extended.portals.insert(portal, (sql.clone(), false));
                    }
                    None => {
                        // PostgreSQL will answer with an error; nothing can execute.
                        extended.portals.remove(&portal);
                    }
                }
            }
        }
        b'E' => {
            if let Some(portal) = fields.cstr() {
                if let Some((sql, executed)) = extended.portals.get_mut(&portal) {
                    if !*executed {
                        *executed = true;
                        shared.record(id, sql.clone(), Protocol::Extended);
                    }
                }
            }
        }
        b'C' => {
            let which = fields.byte();
            if let Some(name) = fields.cstr() {
                match which {
                    Some(b'S') => {
                        extended.statements.remove(&name);
                    }
                    Some(b'P') => {
                        extended.portals.remove(&name);
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// After something undecodable: pipe the rest unchanged and say why decoding stopped.
fn pipe_raw(
    mut reader: BufReader<&TcpStream>,
    mut to_server: &TcpStream,
    why: String,
) -> Result<(), String> {
    std::io::copy(&mut reader, &mut to_server).map_err(|e| format!("pipe: {e}"))?;
    if why.is_empty() {
        Ok(())
    } else {
        Err(format!("not decoded from {why} on"))
    }
}

/// Fills `buf`; false at end of stream (or a reset) before its first byte.
fn read_or_eof(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            // A client that exits without Terminate while answers are still unread in its
            // socket (the `phased` binary does) resets the connection: an end like any other.
            Err(e) if filled == 0 && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(false)
            }
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The startup packet's `name\0value\0…\0` pairs.
fn startup_params(body: &[u8]) -> BTreeMap<String, String> {
    let mut fields = Fields(body);
    let mut params = BTreeMap::new();
    while let Some(name) = fields.cstr() {
        if name.is_empty() {
            break;
        }
        let Some(value) = fields.cstr() else { break };
        params.insert(name, value);
    }
    params
}

/// A cursor over a message body.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn cstr(&mut self) -> Option<String> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let text = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Some(text)
    }

    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }
}
