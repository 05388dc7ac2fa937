//! The sync engine's outgoing side against the real stack (Postfix
//! submission with XOAUTH2 through Dovecot, read back over Dovecot IMAP):
//! the host's outbox is sent once per message, across `kill -9`; refusals
//! are per recipient; an unreachable server defers and, with its retries
//! spent, disables the direction; a sender other than the mailbox never
//! leaves; bare line endings cannot smuggle a second message; and bytes a
//! server sends after its `220` to STARTTLS are refused.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailsync::checks::TestOptions;
use mailsync::lifecycle::{DirectionStatus, FailurePolicy};
use mailsync::model::{
    Endpoint, IncomingDelivery, Mailbox, MailboxId, MailboxSpec, OAuthApp, Security, ServerProfile,
};
use mailsync::sync::{
    ComposedMessage, DeliveryOutcome, IncomingMessage, MailAddress, MessageSink, Outbox,
    OutgoingContent, OutgoingMessage, OutgoingState, SendOutcome, SendReport,
};
use mailsync::{
    Clock, Engine, EngineOptions, ErrorCode, MailSync, ManualClock, Options, StoreConfig, Timestamp,
};
use mailsync_e2e::{Stack, wire};

const RECIPIENT: &str = "sync17@example.test";
const SECOND_RECIPIENT: &str = "sync18@example.test";

// ------------------------------------------------------------------ host side

/// Incoming mail is not what these tests are about.
struct NoSink;

#[async_trait]
impl MessageSink for NoSink {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        Ok(vec![DeliveryOutcome::Stored; messages.len()])
    }
}

type Hook = Box<dyn Fn(&SendReport) + Send + Sync>;

/// A host outbox in memory: messages stay pending until reported sent or
/// failed; every report is kept.
#[derive(Default)]
struct HostOutbox {
    queue: Mutex<Vec<OutgoingMessage>>,
    reports: Mutex<Vec<SendReport>>,
    on_report: Mutex<Option<Hook>>,
}

#[async_trait]
impl Outbox for HostOutbox {
    async fn pending(
        &self,
        _mailbox: &MailboxId,
        limit: u32,
    ) -> mailsync::Result<Vec<OutgoingMessage>> {
        let queue = self.queue.lock().unwrap();
        Ok(queue.iter().take(limit as usize).cloned().collect())
    }

    async fn report(&self, report: SendReport) -> mailsync::Result<()> {
        if matches!(
            report.outcome,
            SendOutcome::Sent { .. } | SendOutcome::Failed { .. }
        ) {
            self.queue.lock().unwrap().retain(|m| m.id != report.id);
        }
        if let Some(hook) = self.on_report.lock().unwrap().as_ref() {
            hook(&report);
        }
        self.reports.lock().unwrap().push(report);
        Ok(())
    }
}

impl HostOutbox {
    fn push(&self, message: OutgoingMessage) {
        self.queue.lock().unwrap().push(message);
    }

    fn reports_of(&self, id: &str) -> Vec<SendReport> {
        self.reports
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.id == id)
            .cloned()
            .collect()
    }

    fn last(&self, id: &str) -> SendReport {
        self.reports_of(id)
            .pop()
            .unwrap_or_else(|| panic!("no report for {id}"))
    }
}

fn address(address: &str) -> MailAddress {
    MailAddress {
        name: None,
        address: address.to_owned(),
    }
}

fn composed(id: &str, to: &[&str], subject: &str, text: &str) -> OutgoingMessage {
    OutgoingMessage {
        id: id.to_owned(),
        content: OutgoingContent::Composed {
            message: ComposedMessage {
                to: to.iter().map(|a| address(a)).collect(),
                subject: subject.to_owned(),
                text: Some(text.to_owned()),
                ..ComposedMessage::default()
            },
        },
    }
}

fn raw(id: &str, bytes: Vec<u8>) -> OutgoingMessage {
    OutgoingMessage {
        id: id.to_owned(),
        content: OutgoingContent::Raw {
            raw: bytes.into(),
            recipients: Vec::new(),
        },
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

// ------------------------------------------------------------------ mailbox

struct Env {
    stack: Stack,
    sync: MailSync,
    mailbox: Mailbox,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

fn options(stack: &Stack) -> Options {
    let mut options = Options::default();
    options.google_issuer_override = Some(stack.oauth.issuer.clone());
    options.extra_root_certs_pem = vec![mailsync_e2e::ca_cert_pem()];
    options
}

/// A connected mailbox for `email` that sends only (no incoming), tested
/// and enabled with a Test Message through Postfix (STARTTLS).
async fn sender(email: &str, clock: Option<Arc<ManualClock>>, policy: FailurePolicy) -> Env {
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let mut options = options(&stack);
    options.failure_policy = policy;
    let sync = match clock {
        Some(clock) => MailSync::open_with_clock(StoreConfig::sqlite(&db), options, clock)
            .await
            .unwrap(),
        None => MailSync::open(StoreConfig::sqlite(&db), options)
            .await
            .unwrap(),
    };
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
    profile.processing.min_polling_interval_minutes = 0;
    sync.directory().create_profile(profile).await.unwrap();
    let mut spec = MailboxSpec::user(email);
    spec.incoming_delivery = IncomingDelivery::None;
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
        .test_and_enable(
            &mailbox.id,
            &TestOptions {
                send_test_message: true,
            },
        )
        .await
        .unwrap();
    assert!(report.is_success(), "{report:#?}");
    assert!(report.outgoing_enabled);
    Env {
        stack,
        sync,
        mailbox,
        db,
        _dir: dir,
    }
}

impl Env {
    /// Points the profile's outgoing endpoint somewhere else.
    async fn set_outgoing(&self, endpoint: Endpoint) {
        let profile_id = self.mailbox.profile_id.clone().unwrap();
        let profile = self
            .sync
            .directory()
            .get_profile(&profile_id)
            .await
            .unwrap();
        self.sync
            .directory()
            .update_profile(profile.with_outgoing(endpoint))
            .await
            .unwrap();
    }

    async fn outgoing_status(&self) -> DirectionStatus {
        self.sync
            .directory()
            .state(&self.mailbox.id)
            .await
            .unwrap()
            .outgoing
            .status
    }
}

/// Postfix behind a port of its own that can be taken away and given
/// back: while "stopped" nothing listens on the port (connections are
/// refused, as when Postfix is down); while running, every connection is
/// forwarded byte for byte to the real Postfix (nothing is imitated). The
/// stack's Postfix is shared, so it is not stopped itself.
struct StoppablePostfix {
    port: u16,
    target: (String, u16),
    running: Option<tokio::task::JoinHandle<()>>,
}

impl StoppablePostfix {
    async fn start(stack: &Stack) -> StoppablePostfix {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut postfix = StoppablePostfix {
            port,
            target: (stack.smtp.host.clone(), stack.smtp.starttls_port),
            running: None,
        };
        postfix.serve(listener);
        postfix
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        self.running = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    let mut server = tokio::net::TcpStream::connect((target.0.as_str(), target.1))
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        }));
    }

    /// Postfix "stops": the port closes and open connections are cut.
    async fn stop(&mut self) {
        if let Some(task) = self.running.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Postfix "starts again" on the same port.
    async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(listener);
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::new(&self.target.0, self.port, Security::StartTls)
    }
}

fn engine(env: &Env, outbox: Arc<HostOutbox>, options: EngineOptions) -> Engine {
    Engine::with_outbox(env.sync.clone(), Arc::new(NoSink), outbox, options).unwrap()
}

// ------------------------------------------------------------------ reading back

/// An IMAP session on a recipient's INBOX (EXAMINE: nothing changes).
struct Inbox {
    conn: wire::Conn,
    tag: u32,
}

impl Inbox {
    async fn open(stack: &Stack, email: &str) -> Inbox {
        let email_owned = email.to_owned();
        let token = tokio::task::spawn_blocking(move || mailsync_e2e::token(&email_owned))
            .await
            .unwrap();
        let mut conn = wire::connect_tls(&stack.imap.host, stack.imap.tls_port).await;
        wire::imap_greeting(&mut conn).await;
        let auth = wire::imap_auth(
            &mut conn,
            wire::Mech::XOAuth2,
            email,
            &token.access_token,
            &stack.imap.host,
            stack.imap.tls_port,
        )
        .await;
        assert!(auth.ok, "IMAP refused the token of {email}: {auth:?}");
        let mut inbox = Inbox { conn, tag: 0 };
        let (_, done) = inbox.cmd("EXAMINE INBOX").await;
        assert!(done.contains("OK"), "{done}");
        inbox
    }

    async fn cmd(&mut self, command: &str) -> (Vec<String>, String) {
        self.tag += 1;
        wire::imap_cmd(&mut self.conn, &format!("t{}", self.tag), command).await
    }

    /// UIDs of the messages whose `header` contains `value`.
    async fn search(&mut self, header: &str, value: &str) -> Vec<u32> {
        let (_, done) = self.cmd("NOOP").await;
        assert!(done.contains("OK"), "{done}");
        let (lines, done) = self
            .cmd(&format!("UID SEARCH HEADER {header} \"{value}\""))
            .await;
        assert!(done.contains("OK"), "{done}");
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("* SEARCH"))
            .flat_map(|l| l.split_whitespace())
            .filter_map(|u| u.parse().ok())
            .collect()
    }

    /// The whole message (headers and body) of a UID.
    async fn message(&mut self, uid: u32) -> String {
        let (lines, done) = self.cmd(&format!("UID FETCH {uid} (BODY.PEEK[])")).await;
        assert!(done.contains("OK"), "{done}");
        lines.join("\n")
    }

    /// `(Subject, Message-ID)` of each message whose subject contains `value`.
    async fn subjects_and_ids(&mut self, value: &str) -> Vec<(String, String)> {
        let uids = self.search("Subject", value).await;
        if uids.is_empty() {
            return Vec::new();
        }
        let set: Vec<String> = uids.iter().map(u32::to_string).collect();
        let (lines, done) = self
            .cmd(&format!(
                "UID FETCH {} (BODY.PEEK[HEADER.FIELDS (SUBJECT MESSAGE-ID)])",
                set.join(",")
            ))
            .await;
        assert!(done.contains("OK"), "{done}");
        lines
            .iter()
            .filter(|l| l.contains("FETCH"))
            .map(|l| {
                let field = |name: &str| {
                    // The literal follows its `{n}` after a line feed.
                    l.split('\n')
                        .map(|h| h.trim_end_matches('\r'))
                        .find_map(|h| {
                            let (n, v) = h.split_once(':')?;
                            n.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default()
                };
                (
                    field("Subject"),
                    field("Message-ID")
                        .trim_matches(|c| c == '<' || c == '>')
                        .to_owned(),
                )
            })
            .collect()
    }

    /// Waits (bounded) until a message with this Message-ID is in the INBOX.
    async fn wait_for_id(&mut self, message_id: &str) -> u32 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(uid) = self.search("Message-ID", message_id).await.first() {
                return *uid;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "<{message_id}> did not arrive"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn sent_id(report: &SendReport) -> &str {
    assert!(
        matches!(report.outcome, SendOutcome::Sent { .. }),
        "{report:?}"
    );
    &report.message_id
}

// ------------------------------------------------------------------ tests

/// Composed and raw messages go out once, with the Message-ID the engine
/// reported; a second cycle sends nothing again; Test & Enable's Test
/// Message (sent through our STARTTLS) arrives too.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_mail_is_sent_once_with_its_message_id() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = sender("sync11@example.test", None, FailurePolicy::default()).await;
    let outbox = Arc::new(HostOutbox::default());
    let tag = unique("once");
    outbox.push(composed(
        "c1",
        &[RECIPIENT, SECOND_RECIPIENT],
        &format!("{tag} composed"),
        "Hello from the CRM.\nSecond line.\n",
    ));
    let own_id = format!("{}@crm.example.test", uuid::Uuid::new_v4().simple());
    outbox.push(raw(
        "r1",
        format!(
            "Message-ID: <{own_id}>\r\nFrom: sync11@example.test\r\nTo: {RECIPIENT}\r\nSubject: {tag} raw\r\n\r\nraw body\r\n"
        )
        .into_bytes(),
    ));
    outbox.push(raw(
        "r2",
        format!(
            "From: Sync Eleven <sync11@example.test>\nTo: {RECIPIENT}\nBcc: {SECOND_RECIPIENT}\nSubject: {tag} raw bare LF\n\nbare\nline feeds\n"
        )
        .into_bytes(),
    ));
    let engine = engine(&env, outbox.clone(), EngineOptions::default());
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(
        (report.sent, report.send_failed, report.send_deferred),
        (3, 0, 0)
    );
    assert!(outbox.queue.lock().unwrap().is_empty());
    assert_eq!(
        sent_id(&outbox.last("r1")),
        own_id,
        "a raw message keeps its own Message-ID"
    );
    let domain_ids: Vec<String> = ["c1", "r2"]
        .iter()
        .map(|id| sent_id(&outbox.last(id)).to_owned())
        .collect();
    for id in &domain_ids {
        assert!(id.ends_with("@example.test"), "{id}");
    }

    // The engine's records agree.
    let records = env
        .sync
        .store()
        .list_outgoing(&env.mailbox.id)
        .await
        .unwrap();
    assert_eq!(records.len(), 3);
    assert!(
        records
            .iter()
            .all(|r| r.state == OutgoingState::Sent && r.attempts == 1)
    );

    // Handed over again, nothing goes out twice: the outcome is reported again.
    outbox.push(composed("c1", &[RECIPIENT], "changed", "changed"));
    let again = engine.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!((again.sent, again.send_failed), (0, 0), "{again:?}");
    let c1 = outbox.reports_of("c1");
    assert_eq!(c1.len(), 2);
    assert_eq!(c1[0], c1[1]);

    let mut inbox = Inbox::open(&env.stack, RECIPIENT).await;
    for id in [&domain_ids[0], &own_id, &domain_ids[1]] {
        inbox.wait_for_id(id).await;
    }
    let got = inbox.subjects_and_ids(&tag).await;
    assert_eq!(got.len(), 3, "each message once: {got:?}");
    let uid = inbox.wait_for_id(&domain_ids[1]).await;
    let text = inbox.message(uid).await;
    assert!(text.contains("bare\r\nline feeds"), "{text}");
    assert!(!text.contains("Bcc"), "{text}");
    // The Bcc and second To recipient got theirs.
    let mut second = Inbox::open(&env.stack, SECOND_RECIPIENT).await;
    second.wait_for_id(&domain_ids[0]).await;
    second.wait_for_id(&domain_ids[1]).await;

    let status = engine.status().await.unwrap();
    let mine = status
        .iter()
        .find(|s| s.mailbox_id == env.mailbox.id)
        .unwrap();
    assert_eq!(mine.outbox.as_ref().unwrap().sent, 3);
    assert!(mine.next_send_due.is_some());
    assert!(matches!(mine.outgoing, DirectionStatus::Enabled { .. }));
}

/// A message a dead process left `sending` (the moment after its data
/// went out, before the server's answer was recorded): by default it is
/// sent again with the same Message-ID; with `unknown_after_crash` it is
/// reported `unknown` and waits for the host's `resend`.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_left_sending_is_resent_with_its_message_id_or_reported_unknown() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = sender("sync11@example.test", None, FailurePolicy::default()).await;
    let tag = unique("crash");
    let store = env.sync.store().clone();
    // What a process that died on the wire leaves behind.
    let left_sending = |id: &str| {
        let now = Timestamp::now_utc();
        mailsync::sync::OutgoingRecord {
            mailbox_id: env.mailbox.id.clone(),
            id: id.to_owned(),
            message_id: format!("{}@example.test", uuid::Uuid::new_v4().simple()),
            state: OutgoingState::Sending,
            attempts: 1,
            next_attempt: None,
            code: None,
            smtp_code: None,
            reply: None,
            refused: Vec::new(),
            created_at: now,
            updated_at: now,
            version: 0,
        }
    };
    let dead = store
        .acquire_lease(
            &env.mailbox.id,
            mailsync::store::LeaseKind::Send,
            "dead process",
            Timestamp::now_utc(),
            Timestamp::now_utc().plus(Duration::from_secs(60)),
        )
        .await
        .unwrap()
        .unwrap();
    let (resent, asked) = (left_sending("again"), left_sending("ask"));
    for r in [&resent, &asked] {
        store.put_outgoing(r, 0, &dead).await.unwrap().unwrap();
    }
    store.release_lease(&dead).await.unwrap();

    let outbox = Arc::new(HostOutbox::default());
    outbox.push(composed(
        "again",
        &[RECIPIENT],
        &format!("{tag} again"),
        "x",
    ));
    let engine_resend = engine(&env, outbox.clone(), EngineOptions::default());
    let report = engine_resend.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!(report.sent, 1, "{report:?}");
    let again = outbox.last("again");
    assert_eq!(sent_id(&again), resent.message_id);
    assert_eq!(again.attempts, 2);

    let mut options = EngineOptions::default();
    options.unknown_after_crash = true;
    let engine_ask = engine(&env, outbox.clone(), options);
    outbox.push(composed("ask", &[RECIPIENT], &format!("{tag} ask"), "x"));
    let report = engine_ask.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!((report.sent, report.send_unknown), (0, 1), "{report:?}");
    let unknown = outbox.last("ask");
    assert!(
        matches!(unknown.outcome, SendOutcome::Unknown { .. }),
        "{unknown:?}"
    );
    assert_eq!(unknown.message_id, asked.message_id);
    // Unknown stays unknown (reported again, not sent) until the host decides.
    let report = engine_ask.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!(report.sent, 0, "{report:?}");
    assert_eq!(outbox.reports_of("ask").len(), 2);
    engine_ask.resend(&env.mailbox.id, "ask").await.unwrap();
    let report = engine_ask.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!(report.sent, 1, "{report:?}");
    assert_eq!(sent_id(&outbox.last("ask")), asked.message_id);
    // A sent message is never sent again.
    assert_eq!(
        engine_ask
            .resend(&env.mailbox.id, "ask")
            .await
            .unwrap_err()
            .code(),
        ErrorCode::Validation
    );

    let mut inbox = Inbox::open(&env.stack, RECIPIENT).await;
    inbox.wait_for_id(&resent.message_id).await;
    inbox.wait_for_id(&asked.message_id).await;
    assert_eq!(inbox.subjects_and_ids(&tag).await.len(), 2);
}

/// Postfix refuses a recipient outside its domain (relay denied, 5xx): the
/// message fails with that code, recipient by recipient, and the mailbox
/// stays enabled; with partial sends allowed, the others get it.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_recipient_fails_the_message_with_its_5xx() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = sender("sync12@example.test", None, FailurePolicy::default()).await;
    let tag = unique("refused");
    let outside = "someone@outside.example.org";
    let outbox = Arc::new(HostOutbox::default());
    outbox.push(composed(
        "whole",
        &[RECIPIENT, outside],
        &format!("{tag} whole"),
        "x",
    ));
    let engine_whole = engine(&env, outbox.clone(), EngineOptions::default());
    let report = engine_whole.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!((report.sent, report.send_failed), (0, 1), "{report:?}");
    assert!(
        report.is_success(),
        "a message's refusal is not the mailbox's failure"
    );
    let failed = outbox.last("whole");
    let SendOutcome::Failed {
        code,
        smtp_code,
        refused,
        ..
    } = &failed.outcome
    else {
        panic!("{failed:?}")
    };
    assert_eq!(*code, ErrorCode::SendRejected);
    assert!(
        smtp_code.is_some_and(|c| (500..600).contains(&c)),
        "{failed:?}"
    );
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].address, outside);
    assert!(refused[0].smtp_code >= 500, "{refused:?}");
    assert!(
        refused[0].reply.contains("Relay access denied"),
        "{refused:?}"
    );
    assert!(matches!(
        env.outgoing_status().await,
        DirectionStatus::Enabled { .. }
    ));

    let mut options = EngineOptions::default();
    options.allow_partial_send = true;
    let partial = engine(&env, outbox.clone(), options);
    outbox.push(composed(
        "partial",
        &[RECIPIENT, outside],
        &format!("{tag} partial"),
        "x",
    ));
    let report = partial.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!((report.sent, report.send_failed), (1, 0), "{report:?}");
    let sent = outbox.last("partial");
    let SendOutcome::Sent { refused, .. } = &sent.outcome else {
        panic!("{sent:?}")
    };
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].address, outside);

    // The partial one arrived; the whole one never reached DATA.
    let mut inbox = Inbox::open(&env.stack, RECIPIENT).await;
    inbox.wait_for_id(&sent.message_id).await;
    assert!(
        inbox
            .search("Message-ID", &failed.message_id)
            .await
            .is_empty()
    );
    let got = inbox.subjects_and_ids(&tag).await;
    assert_eq!(got.len(), 1, "{got:?}");
}

/// A sender other than the mailbox is refused before anything connects.
#[tokio::test(flavor = "multi_thread")]
async fn a_sender_other_than_the_mailbox_is_refused_before_connecting() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = sender("sync13@example.test", None, FailurePolicy::default()).await;
    // The outgoing server counts its connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let server = tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    env.set_outgoing(Endpoint::new("127.0.0.1", port, Security::StartTls))
        .await;
    let outbox = Arc::new(HostOutbox::default());
    let mut spoofed = composed("c", &[RECIPIENT], "spoof", "x");
    if let OutgoingContent::Composed { message } = &mut spoofed.content {
        message.from = Some(address("sync14@example.test"));
    }
    outbox.push(spoofed);
    outbox.push(raw(
        "r",
        format!("From: ceo@example.test\r\nTo: {RECIPIENT}\r\nSubject: spoof\r\n\r\nx\r\n")
            .into_bytes(),
    ));
    let engine = engine(&env, outbox.clone(), EngineOptions::default());
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!(report.send_failed, 2, "{report:?}");
    for id in ["c", "r"] {
        let r = outbox.last(id);
        assert!(
            matches!(
                r.outcome,
                SendOutcome::Failed {
                    code: ErrorCode::SenderNotAllowed,
                    smtp_code: None,
                    ..
                }
            ),
            "{r:?}"
        );
        assert_eq!(r.attempts, 0);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing connected");
    assert!(matches!(
        env.outgoing_status().await,
        DirectionStatus::Enabled { .. }
    ));
    server.abort();
}

/// Postfix stopped: deferred; started again: sent after the backoff, with
/// the Message-ID of the first attempt; stopped for good with short
/// timings: the retries are spent and the direction is disabled with an
/// alert.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_defers_then_sends_or_disables_the_direction() {
    let _p = mailsync_e2e::provider_shared().await;
    let clock = Arc::new(ManualClock::starting_now());
    let policy = FailurePolicy {
        max_retries: 2,
        interval_secs: 60,
    };
    let env = sender("sync14@example.test", Some(clock.clone()), policy).await;
    let tag = unique("deferred");
    let outbox = Arc::new(HostOutbox::default());
    outbox.push(composed("d1", &[RECIPIENT], &format!("{tag} 1"), "x"));
    outbox.push(composed("d2", &[RECIPIENT], &format!("{tag} 2"), "x"));
    let mut options = EngineOptions::default();
    options.postpone_secs = 0;
    let engine = engine(&env, outbox.clone(), options);

    let mut postfix = StoppablePostfix::start(&env.stack).await;
    env.set_outgoing(postfix.endpoint()).await;
    postfix.stop().await;
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert_eq!(report.send_deferred, 2, "{report:?}");
    assert_eq!(report.outgoing_error_code, Some(ErrorCode::Network));
    let first = outbox.last("d1");
    let SendOutcome::Deferred {
        code, next_attempt, ..
    } = &first.outcome
    else {
        panic!("{first:?}")
    };
    assert_eq!(*code, ErrorCode::Network);
    assert!(*next_attempt > clock.now());
    assert!(matches!(
        env.outgoing_status().await,
        DirectionStatus::Retrying { failures: 1, .. }
    ));
    // Not due before the backoff: nothing is tried.
    assert!(engine.run_due().await.unwrap().is_empty());

    // Back: due after the backoff, sent with the Message-ID of the first attempt.
    postfix.restart().await;
    clock.advance(Duration::from_secs(61));
    let reports = engine.run_due().await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].sent, 2, "{reports:?}");
    assert_eq!(sent_id(&outbox.last("d1")), first.message_id);
    assert!(matches!(
        env.outgoing_status().await,
        DirectionStatus::Enabled { .. }
    ));
    let mut inbox = Inbox::open(&env.stack, RECIPIENT).await;
    inbox.wait_for_id(&first.message_id).await;

    // Stopped for good: 1 + max_retries attempts, then disabled.
    postfix.stop().await;
    outbox.push(composed("d3", &[RECIPIENT], &format!("{tag} 3"), "x"));
    for attempt in 1..=3u32 {
        let reports = engine.run_due().await.unwrap();
        assert_eq!(reports.len(), 1, "attempt {attempt}: {reports:?}");
        assert_eq!(reports[0].send_deferred, 1, "{reports:?}");
        clock.advance(Duration::from_secs(61));
    }
    let status = env.outgoing_status().await;
    assert!(
        matches!(
            status,
            DirectionStatus::Disabled {
                code: ErrorCode::Network,
                ..
            }
        ),
        "{status:?}"
    );
    let alerts = env.sync.directory().alerts(&env.mailbox.id).await.unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a.code == "network" && a.level == mailsync::model::AlertLevel::Error),
        "{alerts:?}"
    );
    assert!(
        engine.run_due().await.unwrap().is_empty(),
        "a disabled direction is not due"
    );
    assert_eq!(
        engine.run_once(&env.mailbox.id).await.unwrap_err().code(),
        ErrorCode::NotEnabled
    );
    assert_eq!(outbox.queue.lock().unwrap().len(), 1, "d3 is still pending");
}

/// Outgoing mail rides on the claim-based scheduler: a mailbox that takes
/// no mail in and never had an outgoing cycle gets its schedule from
/// `run_due` (seeded due now), is claimed and sends; then it is postponed
/// (nothing is claimed, the store's due time is the outbox cursor's) until
/// the postponement has passed; `start` likewise.
#[tokio::test(flavor = "multi_thread")]
async fn run_due_claims_a_mailbox_whose_outgoing_mail_is_due() {
    let _p = mailsync_e2e::provider_shared().await;
    let clock = Arc::new(ManualClock::starting_now());
    let env = sender(
        "sync13@example.test",
        Some(clock.clone()),
        FailurePolicy::default(),
    )
    .await;
    let tag = unique("scheduled");
    let outbox = Arc::new(HostOutbox::default());
    outbox.push(composed("s1", &[RECIPIENT], &format!("{tag} 1"), "x"));
    let mut options = EngineOptions::default();
    options.postpone_secs = 120;
    let engine = engine(&env, outbox.clone(), options);
    let store = env.sync.store().clone();
    assert_eq!(
        store.next_due().await.unwrap(),
        None,
        "no incoming mail and no outgoing cycle yet: not scheduled"
    );
    let mut published = engine.reports();
    let reports = engine.run_due().await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].sent, 1, "{reports:?}");
    // The outgoing-only cycle is published too, with what it sent.
    let report = published.try_recv().expect("a published report");
    assert_eq!(
        (report.mailbox_id.clone(), report.sent),
        (env.mailbox.id.clone(), 1)
    );
    assert!(published.try_recv().is_err(), "one report per cycle");
    let next = store.next_due().await.unwrap().expect("scheduled now");
    assert_eq!(
        next.unix_millis(),
        clock.now().plus(Duration::from_secs(120)).unix_millis()
    );

    outbox.push(composed("s2", &[RECIPIENT], &format!("{tag} 2"), "x"));
    assert!(
        engine.run_due().await.unwrap().is_empty(),
        "postponed: not claimed"
    );
    assert_eq!(outbox.queue.lock().unwrap().len(), 1);
    clock.advance(Duration::from_secs(121));
    let reports = engine.run_due().await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].sent, 1, "{reports:?}");
    assert!(outbox.queue.lock().unwrap().is_empty());

    // An engine without an outbox sharing the store cannot send: it
    // postpones the mailbox's outgoing schedule as an empty outbox would,
    // rather than claiming it over and over.
    clock.advance(Duration::from_secs(121));
    let without =
        Engine::new(env.sync.clone(), Arc::new(NoSink), EngineOptions::default()).unwrap();
    assert!(without.run_due().await.unwrap().is_empty());
    let later = store.next_due().await.unwrap().expect("still scheduled");
    assert!(later > clock.now(), "{later} is not after {}", clock.now());
    assert!(without.run_due().await.unwrap().is_empty());

    // `start` claims it the same way once it is due again.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    *outbox.on_report.lock().unwrap() = Some(Box::new(move |r: &SendReport| {
        if r.id == "s3"
            && let Some(tx) = tx.lock().unwrap().take()
        {
            let _ = tx.send(r.clone());
        }
    }));
    outbox.push(composed("s3", &[RECIPIENT], &format!("{tag} 3"), "x"));
    clock.advance(Duration::from_secs(301));
    let handle = engine.start(Duration::from_secs(1));
    let s3 = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("start sent nothing within 30 s")
        .unwrap();
    // Dropped (not stopped) while its cycle may still run: the engine stops
    // in the background and gives its leases back.
    drop(handle);
    let owner = engine.owner().to_owned();
    mailsync_e2e::wait_for(
        "the dropped engine to give its leases back",
        Duration::from_secs(30),
        || {
            let (store, owner) = (store.clone(), owner.clone());
            async move {
                store
                    .list_leases()
                    .await
                    .unwrap()
                    .iter()
                    .all(|l| l.owner != owner)
            }
        },
    )
    .await;
    assert!(matches!(s3.outcome, SendOutcome::Sent { .. }), "{s3:?}");

    let mut inbox = Inbox::open(&env.stack, RECIPIENT).await;
    for id in ["s1", "s2", "s3"] {
        inbox.wait_for_id(sent_id(&outbox.last(id))).await;
    }
}

/// A batch that outlives the access token it authenticated with
/// reconnects with a fresh one.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_outliving_its_token_authenticates_again_with_a_fresh_one() {
    let _p = mailsync_e2e::provider_shared().await;
    let clock = Arc::new(ManualClock::starting_now());
    let env = sender(
        "sync15@example.test",
        Some(clock.clone()),
        FailurePolicy::default(),
    )
    .await;
    let before = env
        .sync
        .connections()
        .grant_info(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    let tag = unique("token");
    let outbox = Arc::new(HostOutbox::default());
    for i in 0..3 {
        outbox.push(composed(
            &format!("t{i}"),
            &[RECIPIENT],
            &format!("{tag} {i}"),
            "x",
        ));
    }
    // After the first message went out, two hours pass.
    let ticking = clock.clone();
    *outbox.on_report.lock().unwrap() = Some(Box::new(move |r: &SendReport| {
        if r.id == "t0" {
            ticking.advance(Duration::from_secs(7200));
        }
    }));
    let engine = engine(&env, outbox.clone(), EngineOptions::default());
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.sent, 3);
    let after = env
        .sync
        .connections()
        .grant_info(&env.mailbox.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        after.obtained_at > before.obtained_at,
        "the token was refreshed for the second connection: {before:?} {after:?}"
    );
    let mut inbox = Inbox::open(&env.stack, RECIPIENT).await;
    for i in 0..3 {
        inbox
            .wait_for_id(sent_id(&outbox.last(&format!("t{i}"))))
            .await;
    }
}

/// `\n.\r\n` inside a raw message neither ends it early nor smuggles a
/// second message (Postfix takes a bare LF as a line end).
#[tokio::test(flavor = "multi_thread")]
async fn a_bare_lf_dot_cannot_end_the_data_or_smuggle_a_message() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = sender("sync16@example.test", None, FailurePolicy::default()).await;
    let tag = unique("smuggle");
    let smuggled = unique("smuggled");
    let body = format!(
        "From: sync16@example.test\r\nTo: {RECIPIENT}\r\nSubject: {tag}\r\n\r\nbefore the dot\n.\r\n\
         MAIL FROM:<sync16@example.test>\r\nRCPT TO:<{SECOND_RECIPIENT}>\r\nDATA\r\n\
         From: sync16@example.test\r\nTo: {SECOND_RECIPIENT}\r\nSubject: {smuggled}\r\n\r\nsmuggled\r\n.\r\n\
         after the dot\r\n"
    );
    let outbox = Arc::new(HostOutbox::default());
    outbox.push(raw("s", body.into_bytes()));
    let marker = unique("marker");
    outbox.push(composed("m", &[SECOND_RECIPIENT], &marker, "after"));
    let engine = engine(&env, outbox.clone(), EngineOptions::default());
    let report = engine.run_once(&env.mailbox.id).await.unwrap();
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.sent, 2, "{report:?}");
    let mut inbox = Inbox::open(&env.stack, RECIPIENT).await;
    let uid = inbox.wait_for_id(sent_id(&outbox.last("s"))).await;
    let text = inbox.message(uid).await;
    for part in ["before the dot", "RCPT TO:", "smuggled", "after the dot"] {
        assert!(
            text.contains(part),
            "{part:?} missing from the message: {text}"
        );
    }
    // The marker went out after it: once it is in, a smuggled message would be too.
    let mut second = Inbox::open(&env.stack, SECOND_RECIPIENT).await;
    second.wait_for_id(sent_id(&outbox.last("m"))).await;
    assert!(
        second.subjects_and_ids(&smuggled).await.is_empty(),
        "a second message was smuggled"
    );
}

/// A server that sends a reply right after its `220` to STARTTLS (in the
/// clear, to be read as if it came over TLS) is refused before the
/// handshake; nothing is authenticated.
#[tokio::test(flavor = "multi_thread")]
async fn bytes_after_the_starttls_220_are_refused() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stack = Stack::get();
    let tls = tls_acceptor(&stack);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut plain = BufReader::new(tcp);
        let mut line = String::new();
        plain
            .get_mut()
            .write_all(b"220 fake.example.test ESMTP\r\n")
            .await
            .unwrap();
        plain.read_line(&mut line).await.unwrap();
        plain
            .get_mut()
            .write_all(b"250-fake.example.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n")
            .await
            .unwrap();
        line.clear();
        plain.read_line(&mut line).await.unwrap();
        assert_eq!(line.trim(), "STARTTLS");
        // The injection: a whole EHLO answer, in the same segment as the 220.
        plain
            .get_mut()
            .write_all(b"220 2.0.0 Ready to start TLS\r\n250-fake.example.test\r\n250 AUTH PLAIN XOAUTH2\r\n")
            .await
            .unwrap();
        let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(10), tls.accept(plain.into_inner())).await
        else {
            return;
        };
        let mut stream = BufReader::new(stream);
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let command = line
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            log.lock().unwrap().push(command.clone());
            let answer: &[u8] = match command.as_str() {
                "EHLO" => b"250-fake.example.test\r\n250 AUTH XOAUTH2 PLAIN\r\n",
                "AUTH" => b"535 5.7.8 Authentication credentials invalid\r\n",
                "QUIT" => b"221 2.0.0 Bye\r\n",
                _ => b"500 5.5.2 What?\r\n",
            };
            if stream.get_mut().write_all(answer).await.is_err() {
                return;
            }
        }
    });
    let opts = mailsync::net::ConnectOptions::new(
        Duration::from_secs(10),
        mailsync::net::TlsSettings::webpki()
            .with_root_pem(mailsync_e2e::ca_cert_pem().as_bytes())
            .unwrap(),
    );
    let creds = mailsync::net::Credentials::OAuth {
        user: "sync19@example.test".into(),
        access_token: mailsync::model::Secret::new("not-a-real-token"),
    };
    let mut steps = mailsync::net::Steps::new("SMTP", opts.timeout);
    let result = mailsync::net::smtp::SmtpClient::connect(
        &Endpoint::new("127.0.0.1", port, Security::StartTls),
        &opts,
        &creds,
        None,
        &mut steps,
    )
    .await;
    let e = match result {
        Ok(client) => panic!("the injected reply was taken: connected as {client:?}"),
        Err(e) => e,
    };
    assert_eq!(e.step, mailsync::net::Step::Tls, "{e}");
    assert!(
        matches!(e.error.code(), ErrorCode::ProtocolError | ErrorCode::Tls),
        "{e}"
    );
    if e.error.code() == ErrorCode::ProtocolError {
        assert!(e.error.message().contains("after its 220"), "{e}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
    let commands = seen.lock().unwrap().clone();
    assert!(
        !commands.iter().any(|c| c == "AUTH"),
        "credentials went to the server: {commands:?}"
    );
}

fn tls_acceptor(stack: &Stack) -> tokio_rustls::TlsAcceptor {
    let dir = stack.ca_cert.parent().unwrap();
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

// ------------------------------------------------------------------ kill -9

const KILL_COUNT: usize = 100;

/// The id of message `n`, and whether it is raw (the others are composed).
fn kill_id(n: usize) -> (String, bool) {
    (format!("k{n:03}"), n.is_multiple_of(2))
}

/// A host outbox on disk, shared by the processes: one file per pending
/// message, a log of every report.
struct DiskOutbox {
    dir: PathBuf,
    tag: String,
    from: String,
}

impl DiskOutbox {
    fn message(&self, id: &str, raw_form: bool) -> OutgoingMessage {
        let subject = format!("{} {id}", self.tag);
        if raw_form {
            raw(
                id,
                format!(
                    "From: {}\r\nTo: {RECIPIENT}\r\nSubject: {subject}\r\n\r\n{}\r\n",
                    self.from,
                    "0123456789 ".repeat(40)
                )
                .into_bytes(),
            )
        } else {
            composed(id, &[RECIPIENT], &subject, &"abcdefghij ".repeat(40))
        }
    }
}

#[async_trait]
impl Outbox for DiskOutbox {
    async fn pending(
        &self,
        _mailbox: &MailboxId,
        limit: u32,
    ) -> mailsync::Result<Vec<OutgoingMessage>> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("pending"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names
            .iter()
            .take(limit as usize)
            .map(|id| {
                let n: usize = id[1..].parse().unwrap();
                self.message(id, kill_id(n).1)
            })
            .collect())
    }

    async fn report(&self, report: SendReport) -> mailsync::Result<()> {
        let outcome = match &report.outcome {
            SendOutcome::Sent { .. } => "sent",
            SendOutcome::Failed { .. } => "failed",
            SendOutcome::Deferred { .. } => "deferred",
            SendOutcome::Unknown { .. } => "unknown",
        };
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("reports.log"))
            .unwrap();
        writeln!(log, "{} {outcome} {}", report.id, report.message_id).unwrap();
        log.sync_all().unwrap();
        if matches!(outcome, "sent" | "failed") {
            let _ = std::fs::remove_file(self.dir.join("pending").join(&report.id));
        }
        println!("REPORT {} {outcome}", report.id);
        std::io::stdout().flush().unwrap();
        Ok(())
    }
}

/// Child process: one outgoing cycle over the disk outbox.
#[test]
#[ignore = "run as a child process by a_hundred_messages_survive_kill_9"]
fn child_send_outbox() {
    let Ok(db) = std::env::var("MAILSYNC_OUT_DB") else {
        return;
    };
    let mailbox = MailboxId::parse(&std::env::var("MAILSYNC_OUT_MAILBOX").unwrap()).unwrap();
    let dir = PathBuf::from(std::env::var("MAILSYNC_OUT_DIR").unwrap());
    let tag = std::env::var("MAILSYNC_OUT_TAG").unwrap();
    let from = std::env::var("MAILSYNC_OUT_FROM").unwrap();
    let offset: u64 = std::env::var("MAILSYNC_OUT_CLOCK_OFFSET")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stack = Stack::get();
        // Each process starts later on the clock than its killed
        // predecessor's send lease lasted, so it takes the lease over at once.
        let clock = Arc::new(ManualClock::new(
            Timestamp::now_utc().plus(Duration::from_secs(offset)),
        ));
        let sync = MailSync::open_with_clock(StoreConfig::sqlite(&db), options(&stack), clock)
            .await
            .unwrap();
        let outbox = Arc::new(DiskOutbox { dir, tag, from });
        let mut engine_options = EngineOptions::default();
        engine_options.lease_secs = 60;
        let engine =
            Engine::with_outbox(sync.clone(), Arc::new(NoSink), outbox, engine_options).unwrap();
        let report = engine.run_once(&mailbox).await.unwrap();
        println!(
            "DONE sent={} failed={} deferred={} error={:?}",
            report.sent, report.send_failed, report.send_deferred, report.outgoing_error_message
        );
        std::io::stdout().flush().unwrap();
        sync.close().await;
    });
}

fn spawn_child(env: &Env, dir: &Path, tag: &str, offset: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_send_outbox",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MAILSYNC_OUT_DB", &env.db)
        .env("MAILSYNC_OUT_MAILBOX", env.mailbox.id.as_str())
        .env("MAILSYNC_OUT_DIR", dir)
        .env("MAILSYNC_OUT_TAG", tag)
        .env("MAILSYNC_OUT_FROM", &env.mailbox.email)
        .env("MAILSYNC_OUT_CLOCK_OFFSET", offset.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// When to `kill -9` a child.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// After its n-th report, and a few milliseconds more.
    After(usize, Duration),
    /// After its n-th report, as soon as a message is on the wire (its
    /// record is `sending`).
    OnTheWire(usize),
}

/// Runs a child until the kill point (then `kill -9`) or until it ends by
/// itself; returns whether it finished. `on_the_wire` tells whether a
/// record is `sending` now.
fn run_child(mut child: Child, kill: Option<Kill>, on_the_wire: impl Fn() -> bool) -> bool {
    let stdout = child.stdout.take().unwrap();
    let mut reported = 0;
    let mut lines = std::io::BufReader::new(stdout).lines();
    while let Some(line) = lines.next() {
        let line = line.unwrap();
        if let Some(done) = line.strip_prefix("DONE ") {
            eprintln!("child finished: {done}");
        }
        if !line.starts_with("REPORT ") {
            continue;
        }
        reported += 1;
        match kill {
            Some(Kill::After(n, extra)) if n == reported => std::thread::sleep(extra),
            Some(Kill::OnTheWire(n)) if n == reported => {
                // Polls the store until the child has a message on the wire.
                while !on_the_wire() {
                    if child.try_wait().unwrap().is_some() {
                        return drain(child, lines);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            _ => continue,
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        return false;
    }
    drain(child, lines)
}

fn drain(
    mut child: Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) -> bool {
    for line in lines {
        if let Some(done) = line.unwrap().strip_prefix("DONE ") {
            eprintln!("child finished: {done}");
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "the child failed: {status}");
    true
}

/// 100 messages in a host outbox; the sending process is killed (`kill
/// -9`) at random points and started again until the outbox is empty.
/// Every message ends sent; none is lost; the only duplicates are of
/// messages that were on the wire when a process died, and they carry the
/// same Message-ID.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_messages_survive_kill_9() {
    let _p = mailsync_e2e::provider_shared().await;
    let env = sender("sync19@example.test", None, FailurePolicy::default()).await;
    let dir = env._dir.path().join("outbox");
    std::fs::create_dir_all(dir.join("pending")).unwrap();
    for n in 0..KILL_COUNT {
        std::fs::write(dir.join("pending").join(kill_id(n).0), b"").unwrap();
    }
    let tag = unique("kill9");
    let seed = uuid::Uuid::new_v4().as_u128() as u64 | 1;
    eprintln!("kill points seed {seed}");
    let mut rng = seed;
    let mut random = move |below: usize| {
        // xorshift64
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % below as u64) as usize
    };
    let mut on_the_wire: BTreeSet<String> = BTreeSet::new();
    let mut kills = 0;
    for round in 0u64.. {
        assert!(round < 30, "the outbox never emptied");
        let child = spawn_child(&env, &dir, &tag, round * 600);
        // Five kills: at least two while a message is on the wire.
        let kill = (kills < 5).then(|| {
            if kills < 2 || random(2) == 0 {
                Kill::OnTheWire(1 + random(25))
            } else {
                Kill::After(1 + random(25), Duration::from_millis(random(15) as u64))
            }
        });
        eprintln!("round {round}: {kill:?}");
        let (store, mailbox) = (env.sync.store().clone(), env.mailbox.id.clone());
        let handle = tokio::runtime::Handle::current();
        let wire_check = move || {
            handle
                .block_on(store.list_outgoing(&mailbox))
                .unwrap()
                .iter()
                .any(|r| r.state == OutgoingState::Sending)
        };
        let finished = tokio::task::spawn_blocking(move || run_child(child, kill, wire_check))
            .await
            .unwrap();
        if !finished {
            kills += 1;
            // What the dead process had on the wire.
            for r in env
                .sync
                .store()
                .list_outgoing(&env.mailbox.id)
                .await
                .unwrap()
            {
                if r.state == OutgoingState::Sending {
                    on_the_wire.insert(r.id.clone());
                }
            }
        }
        let left = std::fs::read_dir(dir.join("pending")).unwrap().count();
        if finished && left == 0 {
            break;
        }
    }
    eprintln!("{kills} kills; on the wire when killed: {on_the_wire:?}");

    // Every message ends sent, with one Message-ID for all its reports.
    let log = std::fs::read_to_string(dir.join("reports.log")).unwrap();
    let mut final_ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in log.lines() {
        let mut parts = line.split_whitespace();
        let (id, outcome, message_id) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert_eq!(outcome, "sent", "{line}");
        final_ids
            .entry(id.to_owned())
            .or_default()
            .insert(message_id.to_owned());
    }
    assert_eq!(final_ids.len(), KILL_COUNT);
    assert!(
        final_ids.values().all(|ids| ids.len() == 1),
        "one Message-ID per message: {final_ids:?}"
    );
    let records = env
        .sync
        .store()
        .list_outgoing(&env.mailbox.id)
        .await
        .unwrap();
    assert_eq!(records.len(), KILL_COUNT);
    for r in &records {
        assert_eq!(r.state, OutgoingState::Sent, "{r:?}");
        assert!(final_ids[&r.id].contains(&r.message_id));
    }

    // Read back: none lost; duplicates only of what was on the wire, with
    // the same Message-ID.
    let mut inbox = Inbox::open(&env.stack, RECIPIENT).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let copies = loop {
        let got = inbox.subjects_and_ids(&tag).await;
        let mut copies: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (subject, message_id) in got {
            let id = subject.rsplit(' ').next().unwrap().to_owned();
            copies.entry(id).or_default().push(message_id);
        }
        if copies.len() == KILL_COUNT {
            break copies;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {KILL_COUNT} arrived",
            copies.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let mut duplicates = 0;
    for (id, message_ids) in &copies {
        let record = records.iter().find(|r| &r.id == id).unwrap();
        assert!(
            message_ids.iter().all(|m| m == &record.message_id),
            "{id}: {message_ids:?} vs {}",
            record.message_id
        );
        if message_ids.len() > 1 {
            duplicates += message_ids.len() - 1;
            assert!(
                on_the_wire.contains(id),
                "{id} arrived {} times but was never on the wire at a kill",
                message_ids.len()
            );
        }
    }
    eprintln!("{duplicates} duplicate(s), all with the same Message-ID");
    assert!(
        duplicates <= on_the_wire.len(),
        "{duplicates} duplicates but only {} messages on the wire at a kill",
        on_the_wire.len()
    );
    let seen: HashSet<&String> = copies.keys().collect();
    assert_eq!(seen.len(), KILL_COUNT);
}
