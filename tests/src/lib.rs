//! Harness for the mailsync local test stack (`tests/stack`, see `docs/testing.md`).
//!
//! [`Stack::get`] returns the parsed `stack.json`, starting the stack with `tests/stack/up`
//! once if it is not running (a file lock keeps parallel test binaries from starting it twice).
//! The helper functions wrap the scripts in `tests/stack/bin`; [`wire`] is a minimal raw
//! IMAP / POP3 / SMTP client over TLS that trusts only the stack's CA.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `tests/stack` in the source tree.
pub fn stack_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("stack")
}

/// The stack's state directory (`$MAILSYNC_STACK_DIR` or `tests/stack/run`).
pub fn state_dir() -> PathBuf {
    match std::env::var_os("MAILSYNC_STACK_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => stack_src().join("run"),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct OAuth {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub revocation_endpoint: String,
    pub userinfo_endpoint: String,
    pub introspection_endpoint: String,
    pub discovery_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub access_token_ttl: u64,
    #[serde(default)]
    pub introspection_client_id: String,
    #[serde(default)]
    pub introspection_client_secret: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MailEndpoint {
    pub host: String,
    pub tls_port: u16,
    pub plain_port: u16,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SmtpEndpoint {
    pub host: String,
    pub starttls_port: u16,
    pub tls_port: u16,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Postgres {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    pub email: String,
    pub password: String,
    #[serde(default)]
    pub imap_pop_disabled: bool,
}

/// The parsed `stack.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Stack {
    pub state_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub ca_cert: PathBuf,
    pub domain: String,
    pub oauth: OAuth,
    pub imap: MailEndpoint,
    pub pop3: MailEndpoint,
    pub smtp: SmtpEndpoint,
    pub lmtp_socket: PathBuf,
    pub postgres: Postgres,
    pub accounts: Vec<Account>,
    pub pids: BTreeMap<String, u32>,
}

static STARTED: OnceLock<()> = OnceLock::new();

impl Stack {
    /// The running stack, started via `tests/stack/up` (once per process, under a file lock)
    /// if it is not running. Re-reads `stack.json` on every call (a provider restart
    /// changes the provider's pid and token lifetime).
    pub fn get() -> Stack {
        STARTED.get_or_init(ensure_running);
        Self::load().expect("stack.json unreadable after tests/stack/up")
    }

    fn load() -> Result<Stack, String> {
        let path = state_dir().join("stack.json");
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn account(&self, email: &str) -> &Account {
        self.accounts
            .iter()
            .find(|a| a.email.eq_ignore_ascii_case(email))
            .unwrap_or_else(|| panic!("no test account {email}"))
    }

    /// Every TCP port the stack listens on, with a name.
    pub fn ports(&self) -> Vec<(&'static str, u16)> {
        let issuer_port = self
            .oauth
            .issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("issuer has a port");
        vec![
            ("provider", issuer_port),
            ("imap tls", self.imap.tls_port),
            ("imap plain", self.imap.plain_port),
            ("pop3 tls", self.pop3.tls_port),
            ("pop3 plain", self.pop3.plain_port),
            ("smtp starttls", self.smtp.starttls_port),
            ("smtp tls", self.smtp.tls_port),
            ("postgres", self.postgres.port),
        ]
    }
}

fn ensure_running() {
    let state = state_dir();
    fs::create_dir_all(&state).expect("create stack state dir");
    let lock = File::create(state.join(".harness.lock")).expect("create harness lock file");
    lock.lock().expect("lock harness lock file");
    let out = Command::new(stack_src().join("up"))
        .stdin(Stdio::null())
        .output()
        .expect("run tests/stack/up");
    if !out.status.success() {
        panic!(
            "tests/stack/up failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(lock);
}

/// PEM text of the stack's test CA (the only root tests should trust).
pub fn ca_cert_pem() -> String {
    fs::read_to_string(Stack::get().ca_cert).expect("read stack CA")
}

/// A rustls connector whose only trust anchor is the stack's CA.
pub fn tls_connector() -> tokio_rustls::TlsConnector {
    let pem = ca_cert_pem();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        roots.add(cert.expect("parse CA pem")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

// ------------------------------------------------------------------ provider coordination

static PROVIDER: RwLock<()> = RwLock::const_new(());

/// Held by tests that use tokens: a provider restart (which invalidates all tokens) waits.
pub async fn provider_shared() -> RwLockReadGuard<'static, ()> {
    PROVIDER.read().await
}

/// Held by tests that restart the provider or inject failures.
pub async fn provider_exclusive() -> RwLockWriteGuard<'static, ()> {
    PROVIDER.write().await
}

// ------------------------------------------------------------------ helper scripts

fn helper(name: &str, args: &[&str]) -> String {
    let _ = Stack::get();
    let out = Command::new(stack_src().join("bin").join(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run tests/stack/bin/{name}: {e}"));
    if !out.status.success() {
        // never echo the arguments: they may hold tokens
        panic!(
            "tests/stack/bin/{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).expect("helper output is UTF-8")
}

/// A token set from the provider's token endpoint. `Debug` hides the token values.
#[derive(Clone, Deserialize)]
pub struct TokenSet {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
    pub scope: Option<String>,
    pub id_token: Option<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Obtain a real token set for a test account through the consent pages.
pub fn token(email: &str) -> TokenSet {
    token_with(email, &[])
}

/// Like [`token`], unchecking the given scopes on the consent page.
pub fn token_with(email: &str, uncheck: &[&str]) -> TokenSet {
    let mut args = vec![email];
    for s in uncheck {
        args.push("--uncheck-scope");
        args.push(s);
    }
    serde_json::from_str(&helper("token", &args)).expect("token helper JSON")
}

/// Walk login + consent for `url`; returns the redirect to the client's redirect_uri.
pub fn consent(url: &str, email: &str, password: &str, deny: bool) -> String {
    let mut args = vec![url, "--email", email, "--password", password];
    if deny {
        args.push("--deny");
    }
    helper("consent", &args).trim().to_string()
}

/// Options for [`deliver`].
#[derive(Debug, Clone, Default)]
pub struct DeliverOpts {
    pub size: Option<usize>,
    pub attachment: bool,
    pub non_ascii: bool,
    pub seed: Option<u64>,
    pub subject_prefix: Option<String>,
}

/// Deliver `count` generated messages into `email`'s INBOX over LMTP; returns their Message-IDs.
pub fn deliver(email: &str, count: usize, opts: &DeliverOpts) -> Vec<String> {
    let mut args: Vec<String> = vec![email.into(), "--count".into(), count.to_string()];
    if let Some(s) = opts.size {
        args.extend(["--size".into(), s.to_string()]);
    }
    if opts.attachment {
        args.push("--attachment".into());
    }
    if opts.non_ascii {
        args.push("--non-ascii".into());
    }
    if let Some(s) = opts.seed {
        args.extend(["--seed".into(), s.to_string()]);
    }
    if let Some(p) = &opts.subject_prefix {
        args.extend(["--subject-prefix".into(), p.clone()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    helper("deliver", &refs)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Revoke a token (and with it the whole grant) at the provider.
pub fn revoke(token: &str) {
    helper("revoke", &["--", token]);
}

/// Restart only the provider with a new access-token lifetime (all tokens become invalid).
pub fn restart_provider(token_ttl_secs: u64) {
    helper(
        "restart-provider",
        &["--token-ttl", &token_ttl_secs.to_string()],
    );
}

/// Restarts the provider with a short access-token lifetime and restores
/// the previous one when dropped — also when the test fails, so later tests
/// and suites never inherit the short lifetime. Hold
/// [`provider_exclusive`] while it lives.
#[must_use = "the lifetime is restored when the guard drops"]
pub struct ShortTokenTtl(u64);

impl ShortTokenTtl {
    /// Sets the lifetime to `secs` until the guard drops.
    pub fn set(secs: u64) -> ShortTokenTtl {
        let before = Stack::get().oauth.access_token_ttl;
        restart_provider(secs);
        ShortTokenTtl(before)
    }
}

impl Drop for ShortTokenTtl {
    fn drop(&mut self) {
        restart_provider(self.0);
    }
}

// ------------------------------------------------------------------ provider HTTP (loopback)

/// A tiny HTTP/1.1 client for the provider on loopback (`Connection: close`).
pub async fn http(
    method: &str,
    url: &str,
    basic_auth: Option<(&str, &str)>,
    form: Option<&str>,
) -> (u16, String) {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .expect("plain http URL on loopback");
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n");
    if let Some((u, p)) = basic_auth {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Authorization: Basic {b}\r\n"));
    }
    let body = form.unwrap_or("");
    if form.is_some() {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(hostport).await?;
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .expect("provider HTTP timeout")
        .expect("provider HTTP I/O");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("HTTP status");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encode a value for `application/x-www-form-urlencoded`.
pub fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The provider's introspection answer for a token (as Dovecot sees it).
pub async fn introspect(token: &str) -> serde_json::Value {
    let s = Stack::get();
    let (status, body) = http(
        "POST",
        &s.oauth.introspection_endpoint,
        Some((
            &s.oauth.introspection_client_id,
            &s.oauth.introspection_client_secret,
        )),
        Some(&format!("token={}", form_encode(token))),
    )
    .await;
    assert_eq!(status, 200, "introspection answered {status}: {body}");
    serde_json::from_str(&body).expect("introspection JSON")
}

/// `GET /__stats` of the provider.
pub async fn stats() -> serde_json::Value {
    let s = Stack::get();
    let (status, body) = http("GET", &format!("{}/__stats", s.oauth.issuer), None, None).await;
    assert_eq!(status, 200, "stats: {status} {body}");
    serde_json::from_str(&body).expect("stats JSON")
}

/// `POST /__stats/reset` of the provider.
pub async fn reset_stats() {
    let s = Stack::get();
    let url = format!("{}/__stats/reset", s.oauth.issuer);
    let (status, body) = http("POST", &url, None, Some("")).await;
    assert_eq!(status, 200, "reset stats: {status} {body}");
}

/// `POST /__fail?mode=MODE&count=N`: failure injection (see docs/testing.md).
pub async fn inject_failure(mode: &str, count: u32) {
    let s = Stack::get();
    let url = format!("{}/__fail?mode={mode}&count={count}", s.oauth.issuer);
    let (status, body) = http("POST", &url, None, Some("")).await;
    assert_eq!(status, 200, "inject failure: {status} {body}");
}

/// Poll (bounded) until `f` returns true.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub mod wire;

/// Whether `email`'s INBOX holds a message with `subject` (IMAP TLS,
/// XOAUTH2 with `token`), searched by the server.
pub async fn imap_search_subject(stack: &Stack, email: &str, token: &str, subject: &str) -> bool {
    let mut c = wire::connect_tls(&stack.imap.host, stack.imap.tls_port).await;
    wire::imap_greeting(&mut c).await;
    let auth = wire::imap_auth(
        &mut c,
        wire::Mech::XOAuth2,
        email,
        token,
        &stack.imap.host,
        stack.imap.tls_port,
    )
    .await;
    assert!(auth.ok, "IMAP refused the token for {email}");
    let (_, done) = wire::imap_cmd(&mut c, "s1", "EXAMINE INBOX").await;
    assert!(done.contains("OK"), "EXAMINE INBOX: {done}");
    let (lines, done) =
        wire::imap_cmd(&mut c, "s2", &format!("SEARCH SUBJECT \"{subject}\"")).await;
    assert!(done.contains("OK"), "SEARCH: {done}");
    lines
        .iter()
        .any(|l| l.starts_with("* SEARCH") && l.split_whitespace().count() > 2)
}
