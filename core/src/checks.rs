//! [`Checks`]: the Dynamics "Test & Enable Mailbox" action.
//!
//! For each direction the mailbox uses, run the real checks step by step and
//! record the outcome:
//!
//! * incoming: access token → TCP → TLS (certificate valid for the host) →
//!   greeting → mechanism advertised → authenticated → INBOX examined (IMAP)
//!   or STAT (POP3);
//! * outgoing: access token → TCP → TLS → EHLO advertises the mechanism →
//!   authenticated → optionally a "Test Message" to the mailbox itself.
//!
//! The [`TestReport`] names every step with its duration, and the failing
//! step with a stable error code and the user's next action. Each direction
//! that ran moves through the lifecycle ([`crate::lifecycle`]): a pass
//! enables it; a transient failure puts it in `Retrying` (the sync engine,
//! once built, will try again; today the next Test & Enable does); a
//! permanent failure disables it with an alert. The profile's last test
//! result is recorded too.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use crate::MailSync;
use crate::error::{Error, ErrorCode, Result};
use crate::lifecycle::LifecycleEvent;
use crate::model::{
    Authentication, Endpoint, IncomingDelivery, LastTestResult, Mailbox, MailboxId,
    OutgoingDelivery, ProfileId, Secret, ServerProfile, TestOutcome, Timestamp,
};
use crate::net::{self, ConnectOptions, CredentialSource, Credentials, ProbeReport, Step, Steps};

pub use crate::lifecycle::Direction;

/// Test & Enable. See the module docs.
#[derive(Clone, Debug)]
pub struct Checks {
    pub(crate) sync: MailSync,
}

/// One step of a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(
        module = "mailsync",
        get_all,
        set_all,
        eq,
        from_py_object,
        new = "from_fields"
    )
)]
pub struct StepResult {
    /// Stable step name: `credentials`, `connect`, `tls`, `greeting`,
    /// `capabilities`, `authenticate`, `select_inbox`, `stat`, `ehlo`, `send`.
    pub step: String,
    /// Whether it passed.
    pub ok: bool,
    /// How long it took, in milliseconds.
    pub duration_ms: u32,
    /// What was observed (e.g. advertised mechanisms), or the error message.
    pub detail: Option<String>,
}

/// Why a direction failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(
        module = "mailsync",
        get_all,
        set_all,
        eq,
        from_py_object,
        new = "from_fields"
    )
)]
pub struct Diagnosis {
    /// The step that failed.
    pub step: String,
    /// Stable error code (see docs/errors.md).
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
    /// What the user or admin should do.
    pub next_action: String,
    /// Whether the check may pass later without changes (then the
    /// direction is `Retrying`, until its retries are spent).
    pub transient: bool,
}

/// The result of one direction's check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(
        module = "mailsync",
        get_all,
        set_all,
        eq,
        from_py_object,
        new = "from_fields"
    )
)]
pub struct DirectionReport {
    /// Incoming or outgoing.
    pub direction: Direction,
    /// `IMAP`, `POP3` or `SMTP`.
    pub protocol: String,
    /// `host:port` checked.
    pub server: String,
    /// Whether every step passed.
    pub success: bool,
    /// Steps in order, the failing one last.
    pub steps: Vec<StepResult>,
    /// The failure, if any.
    pub diagnosis: Option<Diagnosis>,
    /// One-line summary for people.
    pub summary: String,
    /// Total time, in milliseconds.
    pub duration_ms: u32,
}

/// The outcome of [`Checks::test_and_enable`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(
        module = "mailsync",
        get_all,
        set_all,
        eq,
        from_py_object,
        new = "from_fields"
    )
)]
pub struct TestReport {
    /// The mailbox tested.
    pub mailbox_id: MailboxId,
    /// Its address.
    pub email: String,
    /// Incoming check (absent when incoming delivery is None).
    pub incoming: Option<DirectionReport>,
    /// Outgoing check (absent when outgoing delivery is None).
    pub outgoing: Option<DirectionReport>,
    /// Success when every check that ran passed.
    pub outcome: TestOutcome,
    /// Whether incoming sync is enabled after the test.
    pub incoming_enabled: bool,
    /// Whether outgoing sync is enabled after the test.
    pub outgoing_enabled: bool,
    /// When the test started.
    pub tested_at: Timestamp,
}

impl TestReport {
    /// Whether every check that ran passed.
    pub fn is_success(&self) -> bool {
        self.outcome == TestOutcome::Success
    }

    /// The first failure, if any.
    pub fn first_failure(&self) -> Option<&Diagnosis> {
        [&self.incoming, &self.outgoing]
            .into_iter()
            .flatten()
            .find_map(|d| d.diagnosis.as_ref())
    }
}

/// Options for [`Checks::test_and_enable`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(
        module = "mailsync",
        get_all,
        set_all,
        eq,
        from_py_object,
        new = "from_fields"
    )
)]
pub struct TestOptions {
    /// Also send a "Test Message" from the mailbox to itself, as Dynamics does.
    pub send_test_message: bool,
}

/// Credentials for one mailbox: a fresh access token for OAuth profiles, the
/// sealed password for credential profiles.
///
/// One Test & Enable run asks for them once: both directions share the
/// outcome, so a hung provider costs one timeout, not one per direction.
/// Only a server refusing the token (`force_fresh`) asks again.
pub(crate) struct MailboxCredentials {
    sync: MailSync,
    mailbox: Mailbox,
    profile: ServerProfile,
    /// The last access token handed out, to replace when a server refuses it.
    last_token: std::sync::Mutex<Option<Secret>>,
    /// The outcome of the first request, shared by both directions.
    first: tokio::sync::Mutex<Option<std::result::Result<Credentials, (ErrorCode, String)>>>,
}

impl MailboxCredentials {
    pub(crate) fn new(sync: MailSync, mailbox: Mailbox, profile: ServerProfile) -> Self {
        MailboxCredentials {
            sync,
            mailbox,
            profile,
            last_token: std::sync::Mutex::new(None),
            first: tokio::sync::Mutex::new(None),
        }
    }

    async fn shared(&self) -> Result<Credentials> {
        let mut first = self.first.lock().await;
        if first.is_none() {
            let outcome = self
                .obtain(false)
                .await
                .map_err(|e| (e.code(), e.message().to_owned()));
            *first = Some(outcome);
        }
        match first.as_ref() {
            Some(Ok(c)) => Ok(c.clone()),
            Some(Err((code, message))) => Err(Error::new(*code, message.clone())),
            None => Err(Error::new(ErrorCode::Internal, "credentials not obtained")),
        }
    }
}

/// Hands out fresh credentials on every call: the retry after a refusal.
struct Fresh<'a>(&'a MailboxCredentials);

#[async_trait::async_trait]
impl CredentialSource for Fresh<'_> {
    async fn credentials(&self, _force_fresh: bool) -> Result<Credentials> {
        self.0.credentials(true).await
    }
}

#[async_trait::async_trait]
impl CredentialSource for MailboxCredentials {
    async fn credentials(&self, force_fresh: bool) -> Result<Credentials> {
        if force_fresh {
            self.obtain(true).await
        } else {
            self.shared().await
        }
    }
}

impl MailboxCredentials {
    async fn obtain(&self, force_fresh: bool) -> Result<Credentials> {
        let missing = |what: &str| {
            Error::validation(
                what,
                format!("no password is stored for mailbox {}", self.mailbox.email),
            )
        };
        match &self.profile.authentication {
            Authentication::GmailOAuth { .. } | Authentication::OAuthProvider { .. } => {
                let last = self.last_token.lock().map(|t| t.clone()).unwrap_or(None);
                let token = match (force_fresh, last) {
                    (true, Some(rejected)) => {
                        self.sync
                            .obtain_access_token(&self.mailbox.id, Some(&rejected))
                            .await?
                    }
                    _ => {
                        self.sync
                            .obtain_access_token(&self.mailbox.id, None)
                            .await?
                    }
                };
                if let Ok(mut last) = self.last_token.lock() {
                    *last = Some(token.token.secret().clone());
                }
                Ok(Credentials::OAuth {
                    user: self.mailbox.email.clone(),
                    access_token: token.token.secret().clone(),
                })
            }
            Authentication::CredentialsInProfile { username, password } => {
                Ok(Credentials::Password {
                    user: username.clone(),
                    password: password
                        .clone()
                        .ok_or_else(|| missing("authentication.password"))?,
                })
            }
            Authentication::CredentialsPerMailbox {} => {
                let creds = self
                    .mailbox
                    .credentials
                    .as_ref()
                    .ok_or_else(|| missing("credentials"))?;
                Ok(Credentials::Password {
                    user: creds.username.clone(),
                    password: creds
                        .password
                        .clone()
                        .ok_or_else(|| missing("credentials.password"))?,
                })
            }
        }
    }
}

/// Whether the server refused the token itself: one retry with a refreshed
/// token then tells a stale token (passes) from a revoked grant
/// (`token_revoked` at the credentials step).
fn refused_token(probe: &ProbeReport) -> bool {
    matches!(&probe.result, Err(e) if e.step == Step::Authenticate && e.error.code() == ErrorCode::AuthRejected)
}

/// The SMTP check, sending `message` when given.
async fn smtp_probe(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    source: &dyn CredentialSource,
    message: Option<&lettre::Message>,
) -> ProbeReport {
    match message {
        Some(message) => probe_smtp_send(endpoint, opts, source, message).await,
        None => net::probe_smtp(endpoint, opts, source, None).await,
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

fn direction_report(
    direction: Direction,
    server: String,
    probe: ProbeReport,
    started: Instant,
) -> DirectionReport {
    let mut steps: Vec<StepResult> = probe
        .steps
        .iter()
        .map(|r| StepResult {
            step: r.step.as_str().to_owned(),
            ok: true,
            duration_ms: millis(r.duration),
            detail: r.detail.clone(),
        })
        .collect();
    let (success, diagnosis, summary) = match probe.result {
        Ok(summary) => (true, None, summary),
        Err(failed) => {
            steps.push(StepResult {
                step: failed.step.as_str().to_owned(),
                ok: false,
                duration_ms: millis(failed.duration),
                detail: Some(failed.error.message().to_owned()),
            });
            let summary = format!("failed at {}: {}", failed.step, failed.error.message());
            let diagnosis = Diagnosis {
                step: failed.step.as_str().to_owned(),
                code: failed.error.code(),
                message: failed.error.message().to_owned(),
                next_action: failed.error.next_action().to_owned(),
                transient: failed.error.is_transient(),
            };
            (false, Some(diagnosis), summary)
        }
    };
    DirectionReport {
        direction,
        protocol: probe.protocol.to_owned(),
        server,
        success,
        steps,
        diagnosis,
        summary,
        duration_ms: millis(started.elapsed()),
    }
}

/// The lifecycle event a direction's report stands for.
fn event_of(report: &DirectionReport) -> LifecycleEvent {
    match &report.diagnosis {
        None => LifecycleEvent::TestPassed {
            direction: report.direction,
        },
        Some(d) => LifecycleEvent::TestFailed {
            direction: report.direction,
            code: d.code,
            reason: d.message.clone(),
        },
    }
}

impl MailSync {
    /// The connection options for a profile: its timeout, the trusted roots
    /// and whether it allows plaintext on loopback.
    ///
    /// Every connection to a mail server (Test & Enable, the sync engine)
    /// starts here, so the profile is validated again first, as stored: a
    /// record written to the store directly, past [`crate::Directory`]
    /// (a plaintext endpoint off loopback, a Gmail OAuth profile naming
    /// another mail host), is refused before anything is sent. The error
    /// keeps the rule's code (`validation` with the field, or
    /// `host_not_allowed`).
    pub(crate) fn connect_options(&self, profile: &ServerProfile) -> Result<ConnectOptions> {
        let refused = |e: Error| {
            let mut out = Error::new(
                e.code(),
                format!(
                    "server profile '{}' is not valid as stored, so nothing was sent: {}",
                    profile.name,
                    e.message()
                ),
            );
            if let Some(field) = e.field() {
                out.set_field(field);
            }
            out
        };
        profile.validate().map_err(refused)?;
        if self.options().google_issuer_override.is_none() {
            profile.check_google_mail_hosts().map_err(refused)?;
        }
        Ok(ConnectOptions::new(
            profile.processing.connection_timeout(),
            self.oauth().tls.clone(),
        )
        .with_plaintext_on_loopback(profile.allow_plaintext_on_loopback))
    }
}

impl Checks {
    /// Tests the mailbox's incoming and outgoing settings and enables the
    /// directions that pass; with `send_test_message`, also sends a "Test
    /// Message" from the mailbox to itself. See the module docs.
    pub async fn test_and_enable(
        &self,
        mailbox: &MailboxId,
        options: &TestOptions,
    ) -> Result<TestReport> {
        let sync = &self.sync;
        let record_before = sync.directory().get_mailbox(mailbox).await?;
        let Some(profile_id) = record_before.profile_id.clone() else {
            return Err(Error::validation(
                "profile_id",
                format!(
                    "mailbox {} has no server profile; assign one first",
                    record_before.email
                ),
            ));
        };
        let profile = sync.directory().get_profile(&profile_id).await?;
        let opts = sync.connect_options(&profile)?;
        let tested_at = sync.now();
        let source = MailboxCredentials::new(sync.clone(), record_before.clone(), profile.clone());
        let oauth = profile.authentication.is_oauth();

        let incoming = if record_before.incoming_delivery == IncomingDelivery::None {
            None
        } else {
            let started = Instant::now();
            let endpoint = &profile.incoming.endpoint;
            let protocol = profile.incoming.protocol;
            let mut probe = net::probe_incoming(protocol, endpoint, &opts, &source, None).await;
            if oauth && refused_token(&probe) {
                let fresh = Fresh(&source);
                probe = net::probe_incoming(protocol, endpoint, &opts, &fresh, None).await;
            }
            Some(direction_report(
                Direction::Incoming,
                format!("{}:{}", endpoint.host, endpoint.port),
                probe,
                started,
            ))
        };
        let outgoing = if record_before.outgoing_delivery == OutgoingDelivery::None {
            None
        } else {
            let started = Instant::now();
            let endpoint = &profile.outgoing;
            let message = options
                .send_test_message
                .then(|| test_message(&record_before))
                .transpose()?;
            let mut probe = smtp_probe(endpoint, &opts, &source, message.as_ref()).await;
            if oauth && refused_token(&probe) {
                probe = smtp_probe(endpoint, &opts, &Fresh(&source), message.as_ref()).await;
            }
            Some(direction_report(
                Direction::Outgoing,
                format!("{}:{}", endpoint.host, endpoint.port),
                probe,
                started,
            ))
        };

        let events: Vec<LifecycleEvent> = incoming
            .iter()
            .chain(outgoing.iter())
            .map(event_of)
            .collect();
        let state = sync.record(mailbox, &events).await?;
        let success = incoming.iter().chain(outgoing.iter()).all(|r| r.success);
        let report = TestReport {
            mailbox_id: mailbox.clone(),
            email: record_before.email.clone(),
            outcome: if success {
                TestOutcome::Success
            } else {
                TestOutcome::Failure
            },
            incoming,
            outgoing,
            incoming_enabled: matches!(
                state.incoming.status,
                crate::lifecycle::DirectionStatus::Enabled { .. }
            ),
            outgoing_enabled: matches!(
                state.outgoing.status,
                crate::lifecycle::DirectionStatus::Enabled { .. }
            ),
            tested_at,
        };
        self.record_profile_test(&profile_id, &report).await?;
        tracing::info!(mailbox = %report.mailbox_id, success, "test and enable finished");
        Ok(report)
    }

    async fn record_profile_test(&self, profile: &ProfileId, report: &TestReport) -> Result<()> {
        let duration_ms = [&report.incoming, &report.outgoing]
            .into_iter()
            .flatten()
            .map(|d| d.duration_ms)
            .fold(0u32, u32::saturating_add);
        let message = match report.first_failure() {
            None => format!("{}: all checks passed", report.email),
            Some(d) => format!(
                "{}: {} failed ({}): {}",
                report.email, d.step, d.code, d.message
            ),
        };
        let result = LastTestResult {
            outcome: report.outcome,
            at: report.tested_at,
            duration_ms,
            message,
        };
        self.sync.store().put_profile_test(profile, &result).await
    }

    /// The last Test & Enable result of any of a profile's mailboxes.
    pub async fn last_profile_test(&self, profile: &ProfileId) -> Result<Option<LastTestResult>> {
        self.sync.directory().get_profile(profile).await?;
        self.sync.store().get_profile_test(profile).await
    }

    /// Tests and enables every mailbox of a profile, at most the profile's
    /// "maximum concurrent connections" at a time. Reports come back in
    /// mailbox address order.
    pub async fn test_all(
        &self,
        profile: &ProfileId,
        options: &TestOptions,
    ) -> Result<Vec<TestReport>> {
        let profile = self.sync.directory().get_profile(profile).await?;
        let mailboxes = self
            .sync
            .directory()
            .list_mailboxes(Some(&profile.id))
            .await?;
        let limit = usize::from(profile.processing.max_concurrent_connections.max(1));
        let mut reports: Vec<(usize, TestReport)> = futures::stream::iter(
            mailboxes.into_iter().enumerate(),
        )
        .map(|(i, m)| async move { self.test_and_enable(&m.id, options).await.map(|r| (i, r)) })
        .buffer_unordered(limit)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
        reports.sort_by_key(|(i, _)| *i);
        Ok(reports.into_iter().map(|(_, r)| r).collect())
    }
}

/// The "Test Message" Dynamics sends to the mailbox itself. Its subject is
/// always "Test Message"; its Message-ID is unique
/// (`<mailsync-test.<uuid>@<mailbox domain>>`) and reported as the `send`
/// step's detail, so this very message can be found in the mailbox.
fn test_message(mailbox: &Mailbox) -> Result<lettre::Message> {
    let address: lettre::message::Mailbox = mailbox
        .email
        .parse()
        .map_err(|e| Error::validation("email", format!("cannot be used as a sender: {e}")))?;
    let domain = address.email.domain().to_owned();
    lettre::Message::builder()
        .from(address.clone())
        .to(address)
        .subject("Test Message")
        .message_id(Some(format!(
            "<mailsync-test.{}@{domain}>",
            uuid::Uuid::new_v4().simple()
        )))
        .header(lettre::message::header::ContentType::TEXT_PLAIN)
        .body(String::from(
            "This message was sent by mailsync to check that the mailbox can send email.\r\n",
        ))
        .map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot build the test message: {e}"),
            )
        })
}

/// SMTP check that also sends `message`: the steps of [`net::probe_smtp`],
/// then `send`.
async fn probe_smtp_send(
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    source: &dyn CredentialSource,
    message: &lettre::Message,
) -> ProbeReport {
    let mut steps = Steps::new("SMTP", opts.timeout);
    let result = async {
        let creds = steps
            .run(Step::Credentials, source.credentials(false))
            .await?;
        let mut client =
            net::smtp::SmtpClient::connect(endpoint, opts, &creds, None, &mut steps).await?;
        let message_id = message
            .headers()
            .get_raw("Message-ID")
            .map(|id| format!("Message-ID {id}"));
        let reply = steps
            .run_detailed(Step::Send, async {
                client.send_message(message).await.map(|r| (r, message_id))
            })
            .await?;
        let mechanism = client.mechanism();
        client.quit().await;
        Ok(format!(
            "authenticated with {mechanism}; test message accepted ({reply})"
        ))
    }
    .await;
    ProbeReport {
        protocol: "SMTP",
        steps: steps.into_records(),
        result,
    }
}
