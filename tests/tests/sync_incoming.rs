//! The sync engine's incoming side against the real stack (Dovecot IMAP,
//! the Google-like provider): mail flows into a host sink exactly once per
//! key, the mailbox on the server is never changed, a failing sink never
//! moves the cursor, "process email from" holds on the first sync, and the
//! incoming filter decides from headers without downloading bodies.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailsync::checks::TestOptions;
use mailsync::model::{
    Endpoint, IncomingFilter, Mailbox, MailboxSpec, OAuthApp, Security, ServerProfile,
};
use mailsync::sync::{DeliveryOutcome, IncomingMessage, MessageSink};
use mailsync::{
    Engine, EngineOptions, Error, ErrorCode, MailSync, Options, StoreConfig, Timestamp,
};
use mailsync_e2e::{DeliverOpts, Stack, wire};

/// A host sink that keeps what it is given; it can be told to fail on a
/// subject or to ask for a message again later, and it tracks Message-IDs.
#[derive(Default)]
struct Collect {
    stored: Mutex<Vec<IncomingMessage>>,
    fail_on: Mutex<Option<String>>,
    later_on: Mutex<Option<String>>,
    tracked: Mutex<HashSet<String>>,
    batches: Mutex<Vec<usize>>,
}

#[async_trait]
impl MessageSink for Collect {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        self.batches.lock().unwrap().push(messages.len());
        let fail_on = self.fail_on.lock().unwrap().clone();
        if let Some(subject) = fail_on
            && messages
                .iter()
                .any(|m| m.subject.as_deref() == Some(&subject))
        {
            return Err(Error::new(ErrorCode::Store, "the CRM database is down"));
        }
        let later_on = self.later_on.lock().unwrap().clone();
        let mut outcomes = Vec::new();
        let mut stored = self.stored.lock().unwrap();
        for m in messages {
            if later_on.is_some() && m.subject == later_on {
                outcomes.push(DeliveryOutcome::RetryLater);
            } else {
                stored.push(m);
                outcomes.push(DeliveryOutcome::Stored);
            }
        }
        Ok(outcomes)
    }

    async fn tracked(
        &self,
        _mailbox: &mailsync::model::MailboxId,
        message_ids: Vec<String>,
    ) -> mailsync::Result<Vec<bool>> {
        let tracked = self.tracked.lock().unwrap();
        Ok(message_ids.iter().map(|id| tracked.contains(id)).collect())
    }
}

impl Collect {
    /// How many times each of our messages (by subject prefix) was stored.
    fn ours(&self, prefix: &str) -> BTreeMap<String, usize> {
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
}

struct Env {
    stack: Stack,
    sync: MailSync,
    mailbox: Mailbox,
    _dir: tempfile::TempDir,
}

/// A connected, tested and enabled mailbox for `email` that takes in mail
/// received from now on (earlier runs left mail in the INBOX).
async fn enabled_mailbox(email: &str, filter: IncomingFilter) -> Env {
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::default();
    options.google_issuer_override = Some(stack.oauth.issuer.clone());
    options.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    let sync = MailSync::open(StoreConfig::sqlite(dir.path().join("m.db")), options)
        .await
        .unwrap();
    let app = OAuthApp::google(
        stack.oauth.client_id.clone(),
        stack.oauth.client_secret.clone(),
    )
    .for_environment("http://localhost:8765")
    .unwrap();
    let mut profile = ServerProfile::gmail("Stack", app)
        .default_for_new_mailboxes()
        .with_incoming(Endpoint::new(
            &stack.imap.host,
            stack.imap.tls_port,
            Security::Tls,
        ))
        .with_outgoing(Endpoint::new(
            &stack.smtp.host,
            stack.smtp.starttls_port,
            Security::StartTls,
        ));
    profile.processing.connection_timeout_secs = 10;
    sync.directory().create_profile(profile).await.unwrap();
    let mut spec = MailboxSpec::user(email).with_incoming_filter(filter);
    // INTERNALDATE has whole seconds.
    spec.process_email_received_after = Some(Timestamp::now_utc().minus(Duration::from_secs(2)));
    let mailbox = sync.directory().create_mailbox(spec).await.unwrap();
    let consent = sync.connections().connect(&mailbox.id).await.unwrap();
    let password = stack.account(email).password.clone();
    let (url, who) = (consent.url.clone(), email.to_owned());
    let callback =
        tokio::task::spawn_blocking(move || mailsync_e2e::consent(&url, &who, &password, false))
            .await
            .unwrap();
    sync.connections().complete(&callback).await.unwrap();
    let report = sync
        .checks()
        .test_and_enable(&mailbox.id, &TestOptions::default())
        .await
        .unwrap();
    assert!(report.is_success(), "{report:#?}");
    Env {
        stack,
        sync,
        mailbox,
        _dir: dir,
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix} {}", uuid::Uuid::new_v4().simple())
}

async fn deliver(email: &str, count: usize, opts: DeliverOpts) -> Vec<String> {
    let email = email.to_owned();
    tokio::task::spawn_blocking(move || mailsync_e2e::deliver(&email, count, &opts))
        .await
        .unwrap()
}

/// Flags of our messages (by subject prefix), read over IMAP with SELECT.
async fn flags_of(env: &Env, prefix: &str) -> BTreeMap<u32, String> {
    let token = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap();
    let s = &env.stack;
    let mut c = wire::connect_tls(&s.imap.host, s.imap.tls_port).await;
    wire::imap_greeting(&mut c).await;
    let auth = wire::imap_auth(
        &mut c,
        wire::Mech::XOAuth2,
        &env.mailbox.email,
        token.token.expose(),
        &s.imap.host,
        s.imap.tls_port,
    )
    .await;
    assert!(auth.ok);
    let (_, done) = wire::imap_cmd(&mut c, "f0", "SELECT INBOX").await;
    assert!(done.contains("OK"), "{done}");
    let (lines, done) =
        wire::imap_cmd(&mut c, "f1", &format!("UID SEARCH SUBJECT \"{prefix}\"")).await;
    assert!(done.contains("OK"), "{done}");
    let uids: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("* SEARCH"))
        .flat_map(|l| l.split_whitespace().map(str::to_owned))
        .collect();
    let mut out = BTreeMap::new();
    if uids.is_empty() {
        return out;
    }
    let (lines, done) = wire::imap_cmd(
        &mut c,
        "f2",
        &format!("UID FETCH {} (UID FLAGS)", uids.join(",")),
    )
    .await;
    assert!(done.contains("OK"), "{done}");
    for l in lines {
        let uid = l
            .split("UID ")
            .nth(1)
            .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
            .and_then(|u| u.parse().ok());
        let flags = l
            .split("FLAGS (")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or("")
            .to_owned();
        if let Some(uid) = uid {
            out.insert(uid, flags);
        }
    }
    out
}

/// Marks our messages with `\Seen` from another client (the user's).
async fn mark_seen(env: &Env, prefix: &str) {
    let token = env
        .sync
        .connections()
        .access_token(&env.mailbox.id)
        .await
        .unwrap();
    let s = &env.stack;
    let mut c = wire::connect_tls(&s.imap.host, s.imap.tls_port).await;
    wire::imap_greeting(&mut c).await;
    assert!(
        wire::imap_auth(
            &mut c,
            wire::Mech::XOAuth2,
            &env.mailbox.email,
            token.token.expose(),
            &s.imap.host,
            s.imap.tls_port,
        )
        .await
        .ok
    );
    wire::imap_cmd(&mut c, "s0", "SELECT INBOX").await;
    let (lines, _) =
        wire::imap_cmd(&mut c, "s1", &format!("UID SEARCH SUBJECT \"{prefix}\"")).await;
    let uids: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("* SEARCH"))
        .flat_map(|l| l.split_whitespace().map(str::to_owned))
        .collect();
    let (_, done) = wire::imap_cmd(
        &mut c,
        "s2",
        &format!("UID STORE {} +FLAGS (\\Seen)", uids.join(",")),
    )
    .await;
    assert!(done.contains("OK"), "{done}");
}

fn small_batches() -> EngineOptions {
    let mut o = EngineOptions::default();
    o.batch_messages = 7;
    o.postpone_secs = 0;
    o
}

#[tokio::test(flavor = "multi_thread")]
async fn mail_flows_in_once_and_the_mailbox_is_not_changed() {
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock("alice@example.test").await;
    let env = enabled_mailbox("alice@example.test", IncomingFilter::All).await;
    let prefix = unique("flow");
    let ids = deliver(
        &env.mailbox.email,
        30,
        DeliverOpts {
            subject_prefix: Some(prefix.clone()),
            ..DeliverOpts::default()
        },
    )
    .await;
    // Mail the user already read elsewhere is still taken in.
    let seen_prefix = format!("{prefix} read");
    deliver(
        &env.mailbox.email,
        3,
        DeliverOpts {
            subject_prefix: Some(seen_prefix.clone()),
            ..DeliverOpts::default()
        },
    )
    .await;
    mark_seen(&env, &seen_prefix).await;
    let flags_before = flags_of(&env, &prefix).await;
    assert_eq!(flags_before.len(), 33);

    let sink = Arc::new(Collect::default());
    let engine = Engine::new(env.sync.clone(), sink.clone(), small_batches()).unwrap();
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    let ours = sink.ours(&prefix);
    assert_eq!(ours.len(), 33, "every message of ours arrived: {ours:?}");
    assert!(ours.values().all(|n| *n == 1), "none twice: {ours:?}");
    assert!(
        sink.batches.lock().unwrap().iter().all(|n| *n <= 7),
        "batches respect the limit"
    );
    {
        let stored = sink.stored.lock().unwrap();
        let keys: HashSet<&str> = stored.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys.len(), stored.len(), "keys are unique");
        for id in &ids {
            let bare = id.trim_matches(|c| c == '<' || c == '>');
            let m = stored
                .iter()
                .find(|m| m.message_id.as_deref() == Some(bare))
                .unwrap_or_else(|| panic!("Message-ID {id} not delivered"));
            assert!(m.uid.is_some() && m.uid_validity.is_some());
            assert_eq!(m.to[0].address, env.mailbox.email);
            assert!(!m.from.is_empty());
            assert!(m.date.is_some() && m.received_at.is_some());
            assert_eq!(m.size as usize, m.raw.len());
            assert!(!m.unparsed);
            assert!(
                m.raw.starts_with(b"Return-Path") || m.raw.windows(11).any(|w| w == b"Message-ID:")
            );
        }
        let read = stored
            .iter()
            .filter(|m| {
                m.subject
                    .as_deref()
                    .is_some_and(|s| s.starts_with(&seen_prefix))
            })
            .collect::<Vec<_>>();
        assert_eq!(read.len(), 3);
        assert!(read.iter().all(|m| m.flags.iter().any(|f| f == "\\Seen")));
    }
    // Nothing on the server changed: no \Seen added, nothing moved or deleted.
    assert_eq!(flags_of(&env, &prefix).await, flags_before);

    // Nothing new: nothing delivered again.
    let again = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(again.is_success(), "{again:?}");
    assert_eq!(sink.ours(&prefix).values().sum::<usize>(), 33);

    // New mail is picked up by the next cycle.
    let later = format!("{prefix} later");
    deliver(
        &env.mailbox.email,
        5,
        DeliverOpts {
            subject_prefix: Some(later.clone()),
            ..DeliverOpts::default()
        },
    )
    .await;
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(sink.ours(&later).len(), 5);
    assert!(sink.ours(&prefix).values().all(|n| *n == 1));
    let status = engine.status().await.unwrap();
    let mine = status
        .iter()
        .find(|s| s.mailbox_id == env.mailbox.id)
        .unwrap();
    let cursor = mine.cursor.clone().unwrap();
    assert!(cursor.delivered >= 38, "{cursor:?}");
    assert!(cursor.imap.unwrap().last_uid > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_sink_leaves_the_cursor_before_the_message() {
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock("carol@example.test").await;
    let env = enabled_mailbox("carol@example.test", IncomingFilter::All).await;
    let prefix = unique("sinkfail");
    deliver(
        &env.mailbox.email,
        20,
        DeliverOpts {
            subject_prefix: Some(prefix.clone()),
            ..DeliverOpts::default()
        },
    )
    .await;
    let sink = Arc::new(Collect::default());
    // The deliver helper numbers its subjects "<prefix> 1/20" … "<prefix> 20/20".
    let n = format!("{prefix} 12/20");
    *sink.fail_on.lock().unwrap() = Some(n.clone());
    let engine = Engine::new(env.sync.clone(), sink.clone(), small_batches()).unwrap();
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!(report.error_code, Some(ErrorCode::SinkFailed), "{report:?}");
    let got = sink.ours(&prefix);
    assert!(!got.contains_key(&n), "{got:?}");
    // The batches before the failing one were acknowledged and recorded.
    assert_eq!(got.len(), 7, "{got:?}");
    // A sink failure is not the mailbox's fault: the direction stays enabled.
    let state = env.sync.directory().state(&env.mailbox.id).await.unwrap();
    assert!(
        matches!(
            state.incoming.status,
            mailsync::lifecycle::DirectionStatus::Enabled { .. }
        ),
        "{:?}",
        state.incoming.status
    );

    // The sink asks for message 15 later: the cursor stops before it.
    *sink.fail_on.lock().unwrap() = None;
    let m15 = format!("{prefix} 15/20");
    *sink.later_on.lock().unwrap() = Some(m15.clone());
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.retry_later, 1);
    let got = sink.ours(&prefix);
    assert!(
        got.contains_key(&n),
        "the failed message came again: {got:?}"
    );
    assert!(!got.contains_key(&m15));

    // Fixed: 15 arrives, nothing is lost.
    *sink.later_on.lock().unwrap() = None;
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    let got = sink.ours(&prefix);
    assert_eq!(got.len(), 20, "every message arrived: {got:?}");
    assert_eq!(got[&m15], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_to_tracked_email_only_and_other_bodies_are_not_downloaded() {
    let _p = mailsync_e2e::provider_shared().await;
    let _a = mailsync_e2e::account_lock("bob@example.test").await;
    let env = enabled_mailbox("bob@example.test", IncomingFilter::RepliesToTrackedEmail).await;
    let prefix = unique("filter");
    let tracked_id = format!("tracked.{}@crm.example.com", uuid::Uuid::new_v4().simple());
    let replies = format!("{prefix} reply");
    deliver(
        &env.mailbox.email,
        3,
        DeliverOpts {
            subject_prefix: Some(replies.clone()),
            in_reply_to: Some(tracked_id.clone()),
            ..DeliverOpts::default()
        },
    )
    .await;
    let others = format!("{prefix} other");
    deliver(
        &env.mailbox.email,
        10,
        DeliverOpts {
            subject_prefix: Some(others.clone()),
            size: Some(50_000),
            ..DeliverOpts::default()
        },
    )
    .await;
    let sink = Arc::new(Collect::default());
    sink.tracked.lock().unwrap().insert(tracked_id);
    let engine = Engine::new(env.sync.clone(), sink.clone(), small_batches()).unwrap();
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(sink.ours(&replies).len(), 3);
    assert!(sink.ours(&others).is_empty());
    assert!(report.filtered >= 10, "{report:?}");
    // Only the three replies' bodies were downloaded (the others are 50 KB each).
    let reply_bytes: i64 = sink
        .stored
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.raw.len() as i64)
        .sum();
    assert_eq!(report.bytes, reply_bytes, "{report:?}");
    assert!(report.bytes < 50_000, "{report:?}");
    // Filtered mail is counted, not delivered later either.
    let again = engine.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!(again.filtered, 0, "{again:?}");
    assert!(sink.ours(&others).is_empty());
}
