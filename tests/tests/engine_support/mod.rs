//! Setup shared by the sync engine's e2e suites (`sync_engine.rs`,
//! `sync_engine_faults.rs`): a connected, tested and enabled mailbox on the
//! stack, a collecting sink, delivery, and the Dovecot views the tests check.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailsync::checks::TestOptions;
use mailsync::lifecycle::FailurePolicy;
use mailsync::model::{
    Endpoint, IncomingFilter, Mailbox, MailboxSpec, OAuthApp, Security, ServerProfile,
};
use mailsync::sync::{DeliveryOutcome, IncomingMessage, MessageSink};
use mailsync::{
    Clock, Error, ErrorCode, MailSync, ManualClock, Options, RetryPolicy, StoreConfig, SystemClock,
    Timestamp,
};
use mailsync_e2e::{DeliverOpts, Stack};

/// How [`enabled`] builds the mailbox.
pub struct Setup {
    /// The stack client (`web`, `short`, `rotating`, …).
    pub client: &'static str,
    /// POP3 instead of IMAP.
    pub pop3: bool,
    /// The mailbox spec (default: a user mailbox taking in all mail
    /// received from 2 s ago).
    pub spec: Option<MailboxSpec>,
    /// Retries of the directions' transient failures.
    pub failure_policy: Option<FailurePolicy>,
    /// Time for the library (default: the system clock).
    pub clock: Option<Arc<ManualClock>>,
    /// Refresh retries (default: 2 attempts, 50 ms apart).
    pub refresh_retry: RetryPolicy,
    /// The profile's connection timeout.
    pub connection_timeout_secs: u16,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            client: "web",
            pop3: false,
            spec: None,
            failure_policy: None,
            clock: None,
            refresh_retry: RetryPolicy {
                attempts: 2,
                initial_backoff_ms: 50,
                max_backoff_ms: 100,
            },
            connection_timeout_secs: 10,
        }
    }
}

pub struct Env {
    pub stack: Stack,
    pub sync: MailSync,
    pub mailbox: Mailbox,
    pub profile: ServerProfile,
    pub db: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn email(&self) -> &str {
        &self.mailbox.email
    }
}

pub fn options(stack: &Stack, setup: &Setup) -> Options {
    let mut options = Options::default();
    options.google_issuer_override = Some(stack.oauth.issuer.clone());
    options.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    options.refresh_retry = setup.refresh_retry;
    if let Some(policy) = setup.failure_policy {
        options.failure_policy = policy;
    }
    options
}

/// The default spec: a user mailbox taking in all mail received from 2 s
/// ago (INTERNALDATE has whole seconds; INBOXes keep mail across runs).
pub fn user_spec(email: &str) -> MailboxSpec {
    let mut spec = MailboxSpec::user(email).with_incoming_filter(IncomingFilter::All);
    spec.process_email_received_after = Some(Timestamp::now_utc().minus(Duration::from_secs(2)));
    spec
}

/// The stack's profile for a client: Gmail OAuth against the stack's
/// issuer, IMAP (or POP3) over TLS, SMTP with STARTTLS.
pub fn stack_profile(stack: &Stack, client: &str, pop3: bool) -> ServerProfile {
    let c = stack.oauth.client(client).clone();
    let app = OAuthApp::google(c.client_id.clone(), c.client_secret.clone())
        .for_environment("http://localhost:8765")
        .unwrap();
    let mut profile = ServerProfile::gmail(format!("Stack {client}"), app)
        .default_for_new_mailboxes()
        .with_outgoing(Endpoint::new(
            &stack.smtp.host,
            stack.smtp.starttls_port,
            Security::StartTls,
        ));
    profile = if pop3 {
        profile.use_pop3().with_incoming(Endpoint::new(
            &stack.pop3.host,
            stack.pop3.tls_port,
            Security::Tls,
        ))
    } else {
        profile.with_incoming(Endpoint::new(
            &stack.imap.host,
            stack.imap.tls_port,
            Security::Tls,
        ))
    };
    profile
}

/// Walks the consent pages for `email` and completes the connection.
pub async fn connect(sync: &MailSync, mailbox: &Mailbox) {
    let stack = Stack::get();
    let consent = sync.connections().connect(&mailbox.id).await.unwrap();
    let password = stack.account(&mailbox.email).password.clone();
    let (url, who) = (consent.url.clone(), mailbox.email.clone());
    let callback =
        tokio::task::spawn_blocking(move || mailsync_e2e::consent(&url, &who, &password, false))
            .await
            .unwrap();
    sync.connections().complete(&callback).await.unwrap();
}

/// Test & Enable; must pass.
pub async fn test_and_enable(sync: &MailSync, mailbox: &Mailbox) {
    let report = sync
        .checks()
        .test_and_enable(&mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    assert!(report.is_success(), "{report:#?}");
}

/// A connected, tested and enabled mailbox for `email` in a new SQLite store.
pub async fn enabled(email: &str, setup: Setup) -> Env {
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let clock: Arc<dyn Clock> = match &setup.clock {
        Some(c) => c.clone(),
        None => Arc::new(SystemClock),
    };
    let sync = MailSync::open_with_clock(StoreConfig::sqlite(&db), options(&stack, &setup), clock)
        .await
        .unwrap();
    let mut profile = stack_profile(&stack, setup.client, setup.pop3);
    profile.processing.connection_timeout_secs = setup.connection_timeout_secs;
    let profile = sync.directory().create_profile(profile).await.unwrap();
    let spec = setup.spec.unwrap_or_else(|| user_spec(email));
    let mailbox = sync.directory().create_mailbox(spec).await.unwrap();
    connect(&sync, &mailbox).await;
    test_and_enable(&sync, &mailbox).await;
    Env {
        stack,
        sync,
        mailbox,
        profile,
        db,
        dir,
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix} {}", uuid::Uuid::new_v4().simple())
}

/// Delivers `count` messages with a subject prefix (subjects
/// `"<prefix> 1/<count>"` …); returns their Message-IDs.
pub async fn deliver(email: &str, count: usize, prefix: &str) -> Vec<String> {
    deliver_with(
        email,
        count,
        DeliverOpts {
            subject_prefix: Some(prefix.to_owned()),
            ..DeliverOpts::default()
        },
    )
    .await
}

pub async fn deliver_with(email: &str, count: usize, opts: DeliverOpts) -> Vec<String> {
    let email = email.to_owned();
    tokio::task::spawn_blocking(move || mailsync_e2e::deliver(&email, count, &opts))
        .await
        .unwrap()
}

/// Message-ID without angle brackets.
pub fn bare(id: &str) -> String {
    id.trim_matches(|c| c == '<' || c == '>').to_owned()
}

/// How many of `email`'s INBOX messages have `prefix` in their subject
/// (Dovecot's own view, `doveadm search`).
pub async fn server_count(email: &str, prefix: &str) -> usize {
    let (email, prefix) = (email.to_owned(), prefix.to_owned());
    tokio::task::spawn_blocking(move || {
        mailsync_e2e::doveadm(&[
            "search", "-u", &email, "mailbox", "INBOX", "subject", &prefix,
        ])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
    })
    .await
    .unwrap()
}

/// Open IMAP sessions per user, from one `doveadm who -1`.
pub fn imap_sessions() -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for line in mailsync_e2e::doveadm(&["who", "-1"]).lines().skip(1) {
        let mut cols = line.split_whitespace();
        if let (Some(user), Some("imap")) = (cols.next(), cols.next()) {
            *out.entry(user.to_ascii_lowercase()).or_insert(0) += 1;
        }
    }
    out
}

/// A sink that keeps what it is given. It can fail a batch holding a
/// subject, and run a hook on every batch (before storing it).
#[derive(Default)]
pub struct Collect {
    pub stored: Mutex<Vec<IncomingMessage>>,
    pub fail_on: Mutex<Option<String>>,
    pub batches: Mutex<Vec<usize>>,
    #[allow(clippy::type_complexity)]
    pub hook: Mutex<
        Option<
            Arc<
                dyn Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
                    + Send
                    + Sync,
            >,
        >,
    >,
}

#[async_trait]
impl MessageSink for Collect {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        let n = {
            let mut b = self.batches.lock().unwrap();
            b.push(messages.len());
            b.len()
        };
        let hook = self.hook.lock().unwrap().clone();
        if let Some(hook) = hook {
            hook(n).await;
        }
        let fail_on = self.fail_on.lock().unwrap().clone();
        if let Some(subject) = fail_on
            && messages
                .iter()
                .any(|m| m.subject.as_deref() == Some(&subject))
        {
            return Err(Error::new(ErrorCode::Store, "the CRM database is down"));
        }
        let mut stored = self.stored.lock().unwrap();
        let outcomes = messages.iter().map(|_| DeliveryOutcome::Stored).collect();
        stored.extend(messages);
        Ok(outcomes)
    }
}

impl Collect {
    /// How many times each of our messages (by subject prefix) was stored.
    pub fn ours(&self, prefix: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for m in self.stored.lock().unwrap().iter() {
            if let Some(s) = &m.subject
                && s.starts_with(prefix)
            {
                *out.entry(s.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// Our stored messages (by subject prefix).
    pub fn ours_messages(&self, prefix: &str) -> Vec<IncomingMessage> {
        self.stored
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.subject.as_deref().is_some_and(|s| s.starts_with(prefix)))
            .cloned()
            .collect()
    }

    pub fn count(&self) -> usize {
        self.stored.lock().unwrap().len()
    }
}
