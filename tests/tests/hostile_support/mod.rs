//! Scripted hostile servers for `hostile_imap.rs`, `hostile_pop3.rs` and
//! `hostile_smtp.rs`: they play attackers (or badly broken servers) on
//! 127.0.0.1, and the library is driven through its public API with short
//! timeouts.
//!
//! - [`serve`] runs a script per accepted connection; a [`Peer`] reads the
//!   client's lines and writes what the script says (floods, trickles,
//!   injected bytes, a TLS upgrade with the stack's server certificate).
//! - A counting global allocator measures the peak heap growth of each
//!   case ([`Memory`]); [`exclusive`] runs the cases of a binary one at a
//!   time, so the peak is the case's own.
//! - [`bounded`] fails a case that does not end in time ("hung") instead
//!   of hanging the suite.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mailsync::model::Secret;
use mailsync::model::profile::{Endpoint, Security};
use mailsync::net::{ConnectOptions, Credentials, TlsSettings};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

// ------------------------------------------------------------------ memory

/// The system allocator, counting the bytes in use and their peak.
pub struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = IN_USE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                IN_USE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: usize = 1024 * 1024;

/// Heap growth of one case, from [`Memory::start`] to its peak.
pub struct Memory {
    base: usize,
}

impl Memory {
    /// Starts measuring: the peak is reset to what is in use now.
    pub fn start() -> Memory {
        let base = IN_USE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        Memory { base }
    }

    /// The largest heap growth since [`Memory::start`], in bytes.
    pub fn peak_growth(&self) -> usize {
        PEAK.load(Ordering::Relaxed).saturating_sub(self.base)
    }

    /// Fails unless the heap never grew by `mib` MiB or more.
    pub fn assert_below_mib(&self, mib: usize, case: &str) {
        let peak = self.peak_growth();
        assert!(
            peak < mib * MIB,
            "{case}: the heap grew by {:.1} MiB (limit {mib} MiB)",
            peak as f64 / MIB as f64
        );
    }
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held by each case, so cases of one binary run one at a time (their
/// memory peaks are their own).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

// ------------------------------------------------------------------ time

/// Runs `fut`, failing the case if it has not ended within `limit`.
/// Returns its output and how long it took.
pub async fn bounded<T>(
    case: &str,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> (T, Duration) {
    let start = Instant::now();
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => (v, start.elapsed()),
        Err(_) => panic!("{case}: hung (still running after {limit:?})"),
    }
}

// ------------------------------------------------------------------ servers

/// A scripted server on 127.0.0.1.
pub struct Server {
    /// Its port.
    pub port: u16,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Every line clients sent, over all connections, in order.
    pub log: Log,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lines the clients sent.
pub type Log = Arc<std::sync::Mutex<Vec<String>>>;

impl Server {
    /// Whether any line a client sent matches.
    pub fn saw(&self, f: impl Fn(&str) -> bool) -> bool {
        self.log.lock().unwrap().iter().any(|l| f(l))
    }

    /// How many lines clients sent that match.
    pub fn count(&self, f: impl Fn(&str) -> bool) -> usize {
        self.log.lock().unwrap().iter().filter(|l| f(l)).count()
    }

    /// A plaintext endpoint (credentials allowed by [`opts`] on loopback).
    pub fn plain(&self) -> Endpoint {
        Endpoint::new("127.0.0.1", self.port, Security::Plaintext)
    }

    /// A STARTTLS endpoint.
    pub fn starttls(&self) -> Endpoint {
        Endpoint::new("127.0.0.1", self.port, Security::StartTls)
    }
}

/// Accepts connections and runs `script` on each (errors, e.g. the client
/// hanging up mid-flood, end that connection only).
pub async fn serve<F, Fut>(script: F) -> Server
where
    F: Fn(Peer<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let log: Log = Arc::default();
    let lines = log.clone();
    let script = Arc::new(script);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            let lines = lines.clone();
            tokio::spawn(async move {
                let _ = script(Peer::new(stream, lines)).await;
            });
        }
    });
    Server {
        port,
        accepted,
        log,
        task,
    }
}

/// One connection, seen from the server.
pub struct Peer<S> {
    conn: BufReader<S>,
    log: Log,
}

/// A 64 KiB block of `byte`, for floods.
fn block(byte: u8) -> Vec<u8> {
    vec![byte; 64 * 1024]
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    fn new(stream: S, log: Log) -> Self {
        Peer {
            conn: BufReader::new(stream),
            log,
        }
    }

    /// Writes `bytes` (one write).
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.conn.get_mut().write_all(bytes.as_ref()).await?;
        self.conn.get_mut().flush().await
    }

    /// The client's next line without its line ending; `None` at EOF.
    pub async fn line(&mut self) -> std::io::Result<Option<String>> {
        let mut line = String::new();
        let n = (&mut self.conn)
            .take(64 * 1024)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        self.log.lock().unwrap().push(line.clone());
        Ok(Some(line))
    }

    /// The client's next line, which must be there.
    pub async fn expect_line(&mut self) -> std::io::Result<String> {
        self.line()
            .await?
            .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
    }

    /// Writes `head`, then `total` bytes of `byte` (`None`: until the
    /// client hangs up). Returns how many bytes were written.
    pub async fn flood(&mut self, head: &[u8], byte: u8, total: Option<usize>) -> usize {
        if self.send(head).await.is_err() {
            return 0;
        }
        let block = block(byte);
        let mut sent = 0;
        while total.is_none_or(|t| sent < t) {
            let n = total.map_or(block.len(), |t| (t - sent).min(block.len()));
            if self.conn.get_mut().write_all(&block[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
        sent
    }

    /// Writes `unit` again and again until the client hangs up.
    pub async fn repeat(&mut self, unit: &[u8]) -> usize {
        let mut many = Vec::with_capacity(64 * 1024);
        while many.len() + unit.len() <= 64 * 1024 {
            many.extend_from_slice(unit);
        }
        let mut sent = 0;
        while self.conn.get_mut().write_all(&many).await.is_ok() {
            sent += many.len();
        }
        sent
    }

    /// Writes `bytes` one byte a second (the pace is the misbehaviour under
    /// test), stopping when the client hangs up.
    pub async fn trickle(&mut self, bytes: &[u8]) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for b in bytes {
            tick.tick().await;
            if self.send([*b]).await.is_err() {
                return;
            }
        }
    }

    /// Keeps the connection open, reading (and recording) lines until the
    /// client hangs up.
    pub async fn hold(&mut self) {
        while let Ok(Some(_)) = self.line().await {}
    }
}

impl Peer<TcpStream> {
    /// Does the server side of a TLS handshake with the stack's server
    /// certificate (valid for 127.0.0.1) and goes on over TLS.
    pub async fn into_tls(
        self,
    ) -> std::io::Result<Peer<tokio_rustls::server::TlsStream<TcpStream>>> {
        let tcp = self.conn.into_inner();
        let tls = acceptor().accept(tcp).await?;
        Ok(Peer {
            conn: BufReader::new(tls),
            log: self.log,
        })
    }
}

fn acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let stack = mailsync_e2e::Stack::get();
    let dir = stack
        .ca_cert
        .parent()
        .expect("the CA's directory")
        .to_owned();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .expect("server.pem")
        .map(|c| c.expect("a certificate"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("server.key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server certificate");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

// ------------------------------------------------------------------ clients

/// Options with a short timeout; credentials may cross plaintext loopback
/// (the scripted servers speak plaintext unless a case upgrades).
pub fn opts(timeout: Duration) -> ConnectOptions {
    ConnectOptions::new(timeout, TlsSettings::webpki()).with_plaintext_on_loopback(true)
}

/// [`opts`] that also trust the stack's CA (for cases that upgrade to TLS),
/// without plaintext credentials.
pub fn tls_opts(timeout: Duration) -> ConnectOptions {
    let tls = TlsSettings::webpki()
        .with_root_pem(mailsync_e2e::ca_cert_pem().as_bytes())
        .expect("stack CA");
    ConnectOptions::new(timeout, tls)
}

/// The password the cases log in with, and its user.
pub const USER: &str = "victim@example.test";
pub const PASSWORD: &str = "hunter2-secret";

pub fn password() -> Credentials {
    Credentials::Password {
        user: USER.into(),
        password: Secret::new(PASSWORD),
    }
}

/// `PLAIN` initial response for [`password`], as sent in base64.
pub fn plain_b64() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"))
}

/// Whether a client line carries the password (raw, or in a PLAIN response).
pub fn carries_password(line: &str) -> bool {
    line.contains(PASSWORD) || line.contains(&plain_b64())
}
