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

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use tokio::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `tests/stack` in the source tree.
pub fn stack_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("stack")
}

/// The stack's state directory (`$MAILSYNC_STACK_DIR` or `tests/stack/run`). When the
/// checkout is not reachable by the service users (e.g. under a 0700 `/root`),
/// `tests/stack/up` keeps the state in `/var/tmp/mailsync-stack-<hash>` and makes
/// `tests/stack/run` a symlink to it, so this path works either way (`Stack::state_dir`
/// holds the resolved one).
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
    /// The provider's web clients by name: `web` (the client above; follows
    /// `up --token-ttl` / `--rotate-refresh-tokens`), `short` (access tokens live 5 s),
    /// `rotating` (refresh token rotated on every use), `short_rotating` (both).
    #[serde(default)]
    pub clients: BTreeMap<String, OAuthClient>,
}

impl OAuth {
    /// A named client (`web`, `short`, `rotating`, `short_rotating`).
    pub fn client(&self, name: &str) -> &OAuthClient {
        self.clients
            .get(name)
            .unwrap_or_else(|| panic!("no OAuth client {name} in stack.json"))
    }
}

/// One web client of a provider (`client_secret_post`, authorization_code + refresh_token,
/// the same redirect URIs as the `web` client). `Debug` hides the secret.
#[derive(Clone, Deserialize)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
    pub access_token_ttl: u64,
    pub rotate_refresh_tokens: bool,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("access_token_ttl", &self.access_token_ttl)
            .field("rotate_refresh_tokens", &self.rotate_refresh_tokens)
            .finish()
    }
}

/// stack.json `oauth2_generic`: the second, generic (non-Google-dialect) authorization server
/// ("provider2"). RFC 8414 metadata only (`/.well-known/openid-configuration` is 404), scope
/// `mail`, refresh tokens only with `offline_access`, no `email` in the id_token (userinfo
/// has it). Dovecot and Postfix accept its access tokens too. `Debug` hides the secrets.
#[derive(Clone, Deserialize)]
pub struct GenericOAuth {
    pub issuer: String,
    /// `<issuer>/.well-known/oauth-authorization-server` (RFC 8414).
    pub metadata_url: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub revocation_endpoint: String,
    pub userinfo_endpoint: String,
    pub introspection_endpoint: String,
    pub jwks_uri: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    /// `mail`
    pub mail_scope: String,
    /// `openid offline_access email mail`
    pub scopes: Vec<String>,
    pub access_token_ttl: u64,
    pub introspection_client_id: String,
    pub introspection_client_secret: String,
    #[serde(default)]
    pub clients: BTreeMap<String, OAuthClient>,
}

impl std::fmt::Debug for GenericOAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenericOAuth")
            .field("issuer", &self.issuer)
            .field("metadata_url", &self.metadata_url)
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("mail_scope", &self.mail_scope)
            .field("scopes", &self.scopes)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("introspection_client_secret", &"<redacted>")
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

/// Which authorization server of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OAuthServer {
    /// stack.json `oauth`: the Google-like provider.
    #[default]
    Google,
    /// stack.json `oauth2_generic`: the generic provider ("provider2").
    Generic,
}

impl OAuthServer {
    fn arg(self) -> &'static str {
        match self {
            OAuthServer::Google => "google",
            OAuthServer::Generic => "generic",
        }
    }
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

/// The password-only accounts for many-mailbox tests: `bulk001@example.test` …
/// (`count` of them), all with one password; IMAP/POP3 by PLAIN/LOGIN only.
#[derive(Debug, Clone, Deserialize)]
pub struct Bulk {
    pub prefix: String,
    pub count: u32,
    pub domain: String,
    pub password: String,
}

impl Bulk {
    /// The `n`th bulk address (1-based): `bulk001@example.test`.
    pub fn email(&self, n: u32) -> String {
        assert!(
            n >= 1 && n <= self.count,
            "bulk account {n} of {}",
            self.count
        );
        format!("{}{n:03}@{}", self.prefix, self.domain)
    }
}

/// The parsed `stack.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Stack {
    pub state_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub ca_cert: PathBuf,
    pub domain: String,
    pub oauth: OAuth,
    pub oauth2_generic: GenericOAuth,
    pub imap: MailEndpoint,
    pub pop3: MailEndpoint,
    pub smtp: SmtpEndpoint,
    pub lmtp_socket: PathBuf,
    pub postgres: Postgres,
    pub accounts: Vec<Account>,
    /// Absent only in a stack.json written before `up` knew them (the next `up` adds them).
    #[serde(default)]
    pub bulk: Option<Bulk>,
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

    /// The bulk accounts (see [`Bulk`]).
    pub fn bulk(&self) -> &Bulk {
        self.bulk
            .as_ref()
            .expect("stack.json has no bulk accounts: run tests/stack/up")
    }

    pub fn account(&self, email: &str) -> &Account {
        self.accounts
            .iter()
            .find(|a| a.email.eq_ignore_ascii_case(email))
            .unwrap_or_else(|| panic!("no test account {email}"))
    }

    /// Every TCP port the stack listens on, with a name.
    pub fn ports(&self) -> Vec<(&'static str, u16)> {
        let port_of = |issuer: &str| -> u16 {
            issuer
                .rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse().ok())
                .expect("issuer has a port")
        };
        vec![
            ("provider", port_of(&self.oauth.issuer)),
            ("provider2", port_of(&self.oauth2_generic.issuer)),
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

/// The harness's lock file. Not inside `tests/stack/run` when that is the default: `up` may
/// turn that directory into a symlink to a state dir outside the checkout.
fn harness_lock_path() -> PathBuf {
    match std::env::var_os("MAILSYNC_STACK_DIR") {
        Some(d) if !d.is_empty() => {
            let state = PathBuf::from(d);
            fs::create_dir_all(&state).expect("create stack state dir");
            state.join(".harness.lock")
        }
        _ => stack_src().join(".harness.lock"),
    }
}

fn ensure_running() {
    let lock = File::create(harness_lock_path()).expect("create harness lock file");
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
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
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

// ------------------------------------------------------------------ account coordination

/// The stack's accounts, in the order their locks are taken.
const ACCOUNTS: [&str; 24] = [
    "alice@example.test",
    "bob@example.test",
    "carol@example.test",
    "dave@example.test",
    "sync01@example.test",
    "sync02@example.test",
    "sync03@example.test",
    "sync04@example.test",
    "sync05@example.test",
    "sync06@example.test",
    "sync07@example.test",
    "sync08@example.test",
    "sync09@example.test",
    "sync10@example.test",
    "sync11@example.test",
    "sync12@example.test",
    "sync13@example.test",
    "sync14@example.test",
    "sync15@example.test",
    "sync16@example.test",
    "sync17@example.test",
    "sync18@example.test",
    "sync19@example.test",
    "sync20@example.test",
];

/// The 20 accounts for the sync engine's tests: `sync01@example.test` … `sync20@example.test`
/// (OAuth on both providers, IMAP/POP3/SMTP like alice).
pub fn sync_accounts() -> Vec<String> {
    ACCOUNTS[4..].iter().map(|a| (*a).to_string()).collect()
}

static ACCOUNT_LOCKS: [Mutex<()>; ACCOUNTS.len()] =
    [const { Mutex::const_new(()) }; ACCOUNTS.len()];

/// Held while a test uses grants of some accounts; see [`account_locks`].
#[must_use = "the accounts are free again when the guard drops"]
pub struct AccountGuard {
    _guards: Vec<MutexGuard<'static, ()>>,
}

/// Serialises, within one test binary, the tests that use the same stack account while one
/// of them revokes a grant (a disconnect, a revoked-grant test, a refused consent the library
/// revokes): the providers revoke like Google, so revoking any token of an account kills every
/// grant of that account on that OAuth client, also those of tests running at the same time.
///
/// Take it after [`provider_shared`] / [`provider_exclusive`] (always in that order, or two
/// tests can deadlock), for every account whose grants the test uses; the accounts are locked
/// in a fixed order. Unknown addresses are ignored.
pub async fn account_locks(emails: &[&str]) -> AccountGuard {
    let mut guards = Vec::new();
    for (i, account) in ACCOUNTS.iter().enumerate() {
        if emails.iter().any(|e| e.eq_ignore_ascii_case(account)) {
            guards.push(ACCOUNT_LOCKS[i].lock().await);
        }
    }
    AccountGuard { _guards: guards }
}

/// [`account_locks`] for one account.
pub async fn account_lock(email: &str) -> AccountGuard {
    account_locks(&[email]).await
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

/// Options for [`token_opts`]: which server and client, which scope.
#[derive(Debug, Clone, Default)]
pub struct TokenOpts<'a> {
    pub server: OAuthServer,
    /// A client name from `clients` (default `web`).
    pub client: Option<&'a str>,
    /// Space-separated scope (default: Google-like `openid email profile
    /// https://mail.google.com/`, generic `openid email offline_access mail`).
    pub scope: Option<&'a str>,
    /// Scopes to uncheck on the consent page.
    pub uncheck: &'a [&'a str],
    /// Send no `prompt=consent` (generic provider: then `offline_access` is dropped).
    pub no_prompt: bool,
}

/// A real token set through the consent pages of either server, with any client.
pub fn token_opts(email: &str, opts: &TokenOpts<'_>) -> TokenSet {
    let mut args: Vec<&str> = vec![email, "--provider", opts.server.arg()];
    if let Some(c) = opts.client {
        args.extend(["--client", c]);
    }
    if let Some(sc) = opts.scope {
        args.extend(["--scope", sc]);
    }
    for s in opts.uncheck {
        args.extend(["--uncheck-scope", s]);
    }
    if opts.no_prompt {
        args.push("--no-prompt");
    }
    serde_json::from_str(&helper("token", &args)).expect("token helper JSON")
}

/// A token set from the Google-like provider through the named client
/// (`web`, `short`, `rotating`, `short_rotating`): no provider restart needed for
/// short-lived access tokens or rotating refresh tokens.
pub fn token_client(email: &str, client: &str) -> TokenSet {
    token_opts(
        email,
        &TokenOpts {
            client: Some(client),
            ..TokenOpts::default()
        },
    )
}

/// A token set from the generic provider (scope `openid email offline_access mail`).
pub fn token_generic(email: &str) -> TokenSet {
    token_opts(
        email,
        &TokenOpts {
            server: OAuthServer::Generic,
            ..TokenOpts::default()
        },
    )
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
    /// `In-Reply-To` of every message (angle brackets added if missing).
    pub in_reply_to: Option<String>,
    /// `References` of every message, in order (angle brackets added if missing).
    pub references: Vec<String>,
    /// `From` header and envelope sender: `addr` or `Name <addr>` (default
    /// `sender@outside.example`).
    pub from: Option<String>,
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
    if let Some(id) = &opts.in_reply_to {
        args.extend(["--in-reply-to".into(), id.clone()]);
    }
    if !opts.references.is_empty() {
        args.extend(["--references".into(), opts.references.join(" ")]);
    }
    if let Some(f) = &opts.from {
        args.extend(["--from".into(), f.clone()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    helper("deliver", &refs)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Runs the system `doveadm` against the stack's Dovecot (`tests/stack/bin/doveadm`, i.e.
/// `doveadm -c <state>/dovecot/dovecot.conf ARGS`) and returns its standard output; panics
/// when it fails. E.g. `doveadm(&["mailbox", "status", "-u", email, "messages", "INBOX"])`,
/// `doveadm(&["expunge", "-u", email, "mailbox", "INBOX", "all"])`.
pub fn doveadm(args: &[&str]) -> String {
    helper("doveadm", args)
}

/// The number of IMAP sessions `email` has open right now (logged in, not yet disconnected),
/// from `doveadm who` (Dovecot's anvil). A session is listed from its login until its process
/// has ended: after a client disconnects, poll (e.g. with [`wait_for`]).
pub fn imap_connections(email: &str) -> usize {
    doveadm(&["who", "-1", email])
        .lines()
        .skip(1) // header: username proto pid ip
        .filter(|l| {
            let mut cols = l.split_whitespace();
            cols.next().is_some_and(|u| u.eq_ignore_ascii_case(email))
                && cols.next() == Some("imap")
        })
        .count()
}

/// Sets the UIDVALIDITY of `email`'s INBOX (`doveadm mailbox update --uid-validity`); the
/// messages keep their UIDs. The next SELECT / EXAMINE / STATUS reports the new value.
pub fn set_uid_validity(email: &str, value: u32) {
    set_mailbox_uid_validity(email, "INBOX", value);
}

/// [`set_uid_validity`] for any mailbox of the account.
pub fn set_mailbox_uid_validity(email: &str, mailbox: &str, value: u32) {
    assert!(value != 0, "UIDVALIDITY must not be 0");
    doveadm(&[
        "mailbox",
        "update",
        "-u",
        email,
        "--uid-validity",
        &value.to_string(),
        mailbox,
    ]);
}

/// The UIDVALIDITY of a mailbox of `email`, as Dovecot has it (`doveadm mailbox status`).
pub fn uid_validity(email: &str, mailbox: &str) -> u32 {
    let out = doveadm(&[
        "-f",
        "flow",
        "mailbox",
        "status",
        "-u",
        email,
        "uidvalidity",
        mailbox,
    ]);
    out.split_whitespace()
        .find_map(|kv| kv.strip_prefix("uidvalidity="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("doveadm mailbox status: no uidvalidity in {out:?}"))
}

/// Revoke a token at the provider (as the `web` client): like Google, every grant of its
/// account for that client goes, with all their tokens (other consents too).
pub fn revoke(token: &str) {
    helper("revoke", &["--", token]);
}

/// Revoke a token as the client that owns it (oidc-provider refuses revocation by another
/// client), at either server.
pub fn revoke_with(token: &str, server: OAuthServer, client: &str) {
    helper(
        "revoke",
        &["--provider", server.arg(), "--client", client, "--", token],
    );
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
    let auth = basic_auth.map(|(u, p)| {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        format!("Basic {b}")
    });
    http_request(method, url, auth.as_deref(), form).await
}

/// Like [`http`] with a bearer token (`Authorization: Bearer …`), e.g. for a userinfo endpoint.
pub async fn http_bearer(method: &str, url: &str, token: &str) -> (u16, String) {
    http_request(method, url, Some(&format!("Bearer {token}")), None).await
}

/// [`http`] with an arbitrary `Authorization` header value.
pub async fn http_request(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    form: Option<&str>,
) -> (u16, String) {
    http_request_within(method, url, authorization, form, Duration::from_secs(15))
        .await
        .expect("provider HTTP timeout")
}

/// Like [`http_request`], but gives up after `timeout`: `None` then, and the connection is
/// closed (what a client with a request timeout does; see the `refresh_hang` /
/// `refresh_delay` failure modes).
pub async fn http_request_within(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    form: Option<&str>,
    timeout: Duration,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .expect("plain http URL on loopback");
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n");
    if let Some(a) = authorization {
        req.push_str(&format!("Authorization: {a}\r\n"));
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
    let buf = tokio::time::timeout(timeout, fut)
        .await
        .ok()?
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
    Some((status, body))
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

/// Introspection at either server (with its Dovecot introspection client).
pub async fn introspect_at(server: OAuthServer, token: &str) -> serde_json::Value {
    let s = Stack::get();
    let (url, id, secret) = match server {
        OAuthServer::Google => (
            s.oauth.introspection_endpoint.clone(),
            s.oauth.introspection_client_id.clone(),
            s.oauth.introspection_client_secret.clone(),
        ),
        OAuthServer::Generic => (
            s.oauth2_generic.introspection_endpoint.clone(),
            s.oauth2_generic.introspection_client_id.clone(),
            s.oauth2_generic.introspection_client_secret.clone(),
        ),
    };
    let (status, body) = http(
        "POST",
        &url,
        Some((&id, &secret)),
        Some(&format!("token={}", form_encode(token))),
    )
    .await;
    assert_eq!(status, 200, "introspection answered {status}: {body}");
    serde_json::from_str(&body).expect("introspection JSON")
}

/// `grant_type=refresh_token` at either server as the named client (`client_secret_post`).
/// Returns the status and the JSON body (token values are in it: do not print it).
pub async fn refresh_grant(
    server: OAuthServer,
    client: &str,
    refresh_token: &str,
) -> (u16, serde_json::Value) {
    refresh_grant_within(server, client, refresh_token, Duration::from_secs(15))
        .await
        .expect("provider HTTP timeout")
}

/// Like [`refresh_grant`], giving up after `timeout` (then `None`, and the connection is
/// closed): a client whose refresh request times out, for the `refresh_hang` /
/// `refresh_delay` failure modes ([`inject_failure_for`]).
pub async fn refresh_grant_within(
    server: OAuthServer,
    client: &str,
    refresh_token: &str,
    timeout: Duration,
) -> Option<(u16, serde_json::Value)> {
    let s = Stack::get();
    let (endpoint, c) = match server {
        OAuthServer::Google => (&s.oauth.token_endpoint, s.oauth.client(client)),
        OAuthServer::Generic => (
            &s.oauth2_generic.token_endpoint,
            s.oauth2_generic
                .clients
                .get(client)
                .unwrap_or_else(|| panic!("no generic client {client}")),
        ),
    };
    let form = format!(
        "grant_type=refresh_token&refresh_token={}&client_id={}&client_secret={}",
        form_encode(refresh_token),
        form_encode(&c.client_id),
        form_encode(&c.client_secret)
    );
    let (status, body) = http_request_within("POST", endpoint, None, Some(&form), timeout).await?;
    let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    Some((status, v))
}

/// The claims of a JWT (e.g. an id_token), decoded without verifying the signature:
/// for assertions on what a provider put in it.
pub fn jwt_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).expect("JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

/// `GET /__stats` of either server.
pub async fn stats_of(server: OAuthServer) -> serde_json::Value {
    let s = Stack::get();
    let issuer = match server {
        OAuthServer::Google => &s.oauth.issuer,
        OAuthServer::Generic => &s.oauth2_generic.issuer,
    };
    let (status, body) = http("GET", &format!("{issuer}/__stats"), None, None).await;
    assert_eq!(status, 200, "stats: {status} {body}");
    serde_json::from_str(&body).expect("stats JSON")
}

/// From a `/__stats` answer: token requests of `client_id` with `grant_type` (0 if none).
pub fn client_token_requests(stats: &serde_json::Value, client_id: &str, grant_type: &str) -> u64 {
    stats["token_requests_by_client"][client_id][grant_type]
        .as_u64()
        .unwrap_or(0)
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

/// `POST /__fail` at either server with every option (see docs/testing.md):
/// `mode` (`refresh_503`, `refresh_500`, `refresh_hang`, `refresh_delay`, `introspection_503`,
/// `clear` / `release`), `count` (the next N matching requests), `client` (refresh modes
/// only: a client name from stack.json `clients` such as `rotating`, or a client_id; `None`:
/// every client) and extra query parameters (`("ms", "1500")` for `refresh_delay`).
///
/// - `refresh_hang`: the request is held and never passed to oidc-provider (the refresh
///   token is not used); when the client disconnects it is dropped unprocessed; `clear` /
///   `release` answers still-held ones with 503.
/// - `refresh_delay` + `ms`: oidc-provider processes the request at once (a rotating refresh
///   token is spent), the answer goes out `ms` later, or is lost if the client gave up.
///
/// `/__stats` counts them: `held_refresh_requests` (+ `_dropped`, `_released`, `_pending`),
/// `delayed_refresh_requests`, `delayed_refresh_responses_delivered` / `_lost` / `_pending`.
/// Hold [`provider_exclusive`] while a failure is armed (other tests of this process may use
/// the same client); choose a `client` other suites do not use.
pub async fn inject_failure_for(
    server: OAuthServer,
    mode: &str,
    count: u32,
    client: Option<&str>,
    extra: &[(&str, &str)],
) {
    let s = Stack::get();
    let (issuer, clients) = match server {
        OAuthServer::Google => (&s.oauth.issuer, &s.oauth.clients),
        OAuthServer::Generic => (&s.oauth2_generic.issuer, &s.oauth2_generic.clients),
    };
    let mut url = format!("{issuer}/__fail?mode={}&count={count}", form_encode(mode));
    if let Some(c) = client {
        let id = clients.get(c).map_or(c, |c| c.client_id.as_str());
        url.push_str(&format!("&client={}", form_encode(id)));
    }
    for (k, v) in extra {
        url.push_str(&format!("&{}={}", form_encode(k), form_encode(v)));
    }
    let (status, body) = http("POST", &url, None, Some("")).await;
    assert_eq!(status, 200, "inject failure {mode}: {status} {body}");
}

/// Hold the next `count` refresh requests of `client` (a name such as `rotating`) at the
/// Google-like provider: `refresh_hang`.
pub async fn hold_refreshes(client: &str, count: u32) {
    inject_failure_for(
        OAuthServer::Google,
        "refresh_hang",
        count,
        Some(client),
        &[],
    )
    .await;
}

/// Process the next `count` refresh requests of `client` at the Google-like provider at once
/// and deliver the answer after `delay`: `refresh_delay`.
pub async fn delay_refreshes(client: &str, count: u32, delay: Duration) {
    let ms = delay.as_millis().to_string();
    inject_failure_for(
        OAuthServer::Google,
        "refresh_delay",
        count,
        Some(client),
        &[("ms", &ms)],
    )
    .await;
}

/// `mode=release` at the Google-like provider: cancel armed failures and answer held
/// refresh requests with 503 (same as `clear`).
pub async fn release_held_refreshes() {
    inject_failure_for(OAuthServer::Google, "release", 0, None, &[]).await;
}

/// From a `/__stats` answer: a top-level counter (0 if absent), e.g.
/// `held_refresh_requests`, `delayed_refresh_responses_lost`.
pub fn stat(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or(0)
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

/// Waits (bounded by `timeout`, polling) until `email`'s INBOX holds a message whose
/// `Message-ID` header contains `message_id` (IMAP TLS, XOAUTH2 with `token`, searched by the
/// server), and returns that message's `From`, `To`, `Subject` and `Message-ID` header lines;
/// `None` if it never arrived. Mail reaches the INBOX asynchronously (Postfix → LMTP), hence
/// the wait. Search for a unique Message-ID: mailboxes keep mail across runs.
pub async fn imap_wait_for_message_id(
    stack: &Stack,
    email: &str,
    token: &str,
    message_id: &str,
    timeout: Duration,
) -> Option<String> {
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
    assert!(auth.ok, "IMAP refused the token for {email}: {auth:?}");
    let (_, done) = wire::imap_cmd(&mut c, "s0", "EXAMINE INBOX").await;
    assert!(done.contains("OK"), "EXAMINE INBOX: {done}");
    let deadline = tokio::time::Instant::now() + timeout;
    for i in 0.. {
        let (lines, done) = wire::imap_cmd(
            &mut c,
            &format!("s{i}"),
            &format!("UID SEARCH HEADER Message-ID \"{message_id}\""),
        )
        .await;
        assert!(done.contains("OK"), "SEARCH: {done}");
        let uid = lines
            .iter()
            .filter_map(|l| l.strip_prefix("* SEARCH"))
            .flat_map(|l| l.split_whitespace())
            .next()
            .map(str::to_owned);
        if let Some(uid) = uid {
            let (lines, done) = wire::imap_cmd(
                &mut c,
                "f",
                &format!("UID FETCH {uid} (BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT MESSAGE-ID)])"),
            )
            .await;
            assert!(done.contains("OK"), "FETCH: {done}");
            wire::imap_cmd(&mut c, "l", "LOGOUT").await;
            return Some(lines.join("\n"));
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // NOOP lets the server report new mail in the examined INBOX.
        let (_, done) = wire::imap_cmd(&mut c, &format!("n{i}"), "NOOP").await;
        assert!(done.contains("OK"), "NOOP: {done}");
    }
    None
}
