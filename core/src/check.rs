//! Test and enable: the Dynamics "Test & Enable Mailbox" action.
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
//! step with a stable error code and the user's next action. The mailbox's
//! per-direction test status, enabled flags and alerts, and the profile's
//! last-test fields are updated: success enables the direction; a transient
//! failure leaves it as it was, to be retried; a permanent failure disables
//! it and raises an alert (reference.md §A.2–A.3).

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

use crate::MailSync;
use crate::error::{Error, ErrorCode, Result};
use crate::model::{
    AlertLevel, Authentication, Endpoint, IncomingDelivery, LastTestResult, Mailbox, MailboxId,
    OutgoingDelivery, ProfileId, Secret, ServerProfile, TestOutcome, TestStatus,
};
use crate::net::{
    self, ConnectOptions, CredentialSource, Credentials, ProbeReport, Step, Steps, TlsSettings,
};

/// Which way mail flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Mail read from the server (IMAP/POP3).
    Incoming,
    /// Mail sent through the server (SMTP).
    Outgoing,
}

/// One step of a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    /// Stable step name: `credentials`, `connect`, `tls`, `greeting`,
    /// `capabilities`, `authenticate`, `select_inbox`, `stat`, `ehlo`, `send`.
    pub step: String,
    /// Whether it passed.
    pub ok: bool,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// What was observed (e.g. advertised mechanisms), or the error message.
    pub detail: Option<String>,
}

/// Why a direction failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// The step that failed.
    pub step: String,
    /// Stable error code (see docs/errors.md).
    pub code: String,
    /// What happened.
    pub message: String,
    /// What the user or admin should do.
    pub next_action: String,
    /// Whether the check will pass later without changes (then the mailbox
    /// stays as it was and is retried).
    pub transient: bool,
}

/// The result of one direction's check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    pub duration_ms: u64,
}

/// The outcome of [`MailSync::test_and_enable`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    #[serde(with = "time::serde::rfc3339")]
    pub tested_at: OffsetDateTime,
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

/// Options for [`MailSync::test_and_enable_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestOptions {
    /// Also send a "Test Message" from the mailbox to itself, as Dynamics does.
    pub send_test_message: bool,
}

/// Credentials for one mailbox: a fresh access token for OAuth profiles, the
/// sealed password for credential profiles.
struct MailboxCredentials {
    sync: MailSync,
    mailbox: Mailbox,
    profile: ServerProfile,
    /// The last access token handed out, to replace when a server refuses it.
    last_token: std::sync::Mutex<Option<Secret>>,
}

impl MailboxCredentials {
    fn new(sync: MailSync, mailbox: Mailbox, profile: ServerProfile) -> Self {
        MailboxCredentials {
            sync,
            mailbox,
            profile,
            last_token: std::sync::Mutex::new(None),
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
                            .refresh_access_token(&self.mailbox.id, &rejected)
                            .await?
                    }
                    _ => self.sync.access_token(&self.mailbox.id).await?,
                };
                if let Ok(mut last) = self.last_token.lock() {
                    *last = Some(token.token.clone());
                }
                Ok(Credentials::OAuth {
                    user: self.mailbox.email.clone(),
                    access_token: token.token,
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
            Authentication::CredentialsPerMailbox => {
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

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
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
                duration_ms: 0,
                detail: Some(failed.error.message().to_owned()),
            });
            let summary = format!("failed at {}: {}", failed.step, failed.error.message());
            let diagnosis = Diagnosis {
                step: failed.step.as_str().to_owned(),
                code: failed.error.code().as_str().to_owned(),
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

/// Applies a direction's outcome to the mailbox: test status and enabled flag.
fn record(mailbox: &mut Mailbox, report: &DirectionReport, at: OffsetDateTime) {
    let (status, enabled) = match report.direction {
        Direction::Incoming => (&mut mailbox.incoming_test, &mut mailbox.incoming_enabled),
        Direction::Outgoing => (&mut mailbox.outgoing_test, &mut mailbox.outgoing_enabled),
    };
    match &report.diagnosis {
        None => {
            *status = TestStatus::Success { at };
            *enabled = true;
        }
        Some(d) => {
            *status = TestStatus::Failure {
                at,
                code: d.code.clone(),
                reason: d.message.clone(),
            };
            if !d.transient {
                *enabled = false;
            }
        }
    }
}

/// One alert per failure cause: when both directions fail the same way
/// (e.g. a revoked grant at `credentials`), the alert names both instead of
/// repeating itself.
fn alert_failures(mailbox: &mut Mailbox, reports: &[&DirectionReport]) {
    let mut done: Vec<(&str, &str)> = Vec::new();
    for report in reports {
        let Some(d) = &report.diagnosis else { continue };
        if done.contains(&(d.step.as_str(), d.code.as_str())) {
            continue;
        }
        done.push((d.step.as_str(), d.code.as_str()));
        let directions: Vec<&str> = reports
            .iter()
            .filter(|r| {
                r.diagnosis
                    .as_ref()
                    .is_some_and(|o| o.step == d.step && o.code == d.code)
            })
            .map(|r| match r.direction {
                Direction::Incoming => "incoming",
                Direction::Outgoing => "outgoing",
            })
            .collect();
        let label = directions.join(" and ");
        let (level, message) = if d.transient {
            (
                AlertLevel::Warning,
                format!(
                    "{label} test of {} failed at {} and will be retried: {}",
                    mailbox.email, d.step, d.message
                ),
            )
        } else {
            (
                AlertLevel::Error,
                format!(
                    "{label} sync for {} is disabled: {} failed: {} {}",
                    mailbox.email, d.step, d.message, d.next_action
                ),
            )
        };
        mailbox.push_alert(level, d.code.clone(), message);
    }
}

impl MailSync {
    /// The connection options for a profile: its timeout and the trusted roots.
    pub(crate) fn connect_options(&self, profile: &ServerProfile) -> Result<ConnectOptions> {
        let mut tls = TlsSettings::webpki();
        for pem in &self.settings().extra_root_certs_pem {
            tls = tls.with_root_pem(pem.as_bytes())?;
        }
        Ok(ConnectOptions::new(
            profile.processing.connection_timeout(),
            tls,
        ))
    }

    /// Tests the mailbox's incoming and outgoing settings and enables the
    /// directions that pass. See the module docs.
    pub async fn test_and_enable(&self, mailbox: &MailboxId) -> Result<TestReport> {
        self.test_and_enable_with(mailbox, &TestOptions::default())
            .await
    }

    /// [`MailSync::test_and_enable`] with options (e.g. send a test message).
    pub async fn test_and_enable_with(
        &self,
        mailbox: &MailboxId,
        options: &TestOptions,
    ) -> Result<TestReport> {
        let record_before = self.get_mailbox(mailbox).await?;
        let Some(profile_id) = record_before.profile_id.clone() else {
            return Err(Error::validation(
                "profile_id",
                format!(
                    "mailbox {} has no server profile; assign one first",
                    record_before.email
                ),
            ));
        };
        let profile = self.get_profile(&profile_id).await?;
        let opts = self.connect_options(&profile)?;
        let tested_at = OffsetDateTime::now_utc();
        let source = MailboxCredentials::new(self.clone(), record_before.clone(), profile.clone());
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

        // Re-read: token refreshes during the checks may have changed the record.
        let mut mailbox_record = self.get_mailbox(mailbox).await?;
        let reports: Vec<&DirectionReport> = incoming.iter().chain(outgoing.iter()).collect();
        for report in &reports {
            record(&mut mailbox_record, report, tested_at);
        }
        alert_failures(&mut mailbox_record, &reports);
        let success = incoming.iter().chain(outgoing.iter()).all(|r| r.success);
        if success {
            mailbox_record.push_alert(
                AlertLevel::Info,
                "mailbox_enabled",
                format!(
                    "{} passed Test & Enable and is enabled",
                    mailbox_record.email
                ),
            );
        }
        let mailbox_record = self.update_mailbox(mailbox_record).await?;
        let report = TestReport {
            mailbox_id: mailbox.clone(),
            email: mailbox_record.email.clone(),
            outcome: if success {
                TestOutcome::Success
            } else {
                TestOutcome::Failure
            },
            incoming,
            outgoing,
            incoming_enabled: mailbox_record.incoming_enabled,
            outgoing_enabled: mailbox_record.outgoing_enabled,
            tested_at,
        };
        self.record_profile_test(&profile_id, &report).await?;
        tracing::info!(mailbox = %report.mailbox_id, success, "test and enable finished");
        Ok(report)
    }

    async fn record_profile_test(&self, profile: &ProfileId, report: &TestReport) -> Result<()> {
        let mut profile = self.get_profile(profile).await?;
        let duration_ms = [&report.incoming, &report.outgoing]
            .into_iter()
            .flatten()
            .map(|d| d.duration_ms)
            .sum();
        let message = match report.first_failure() {
            None => format!("{}: all checks passed", report.email),
            Some(d) => format!(
                "{}: {} failed ({}): {}",
                report.email, d.step, d.code, d.message
            ),
        };
        profile.last_test = Some(LastTestResult {
            outcome: report.outcome,
            at: report.tested_at,
            duration_ms,
            message,
        });
        self.store().update_profile(&profile).await
    }

    /// Tests and enables every mailbox of a profile, at most the profile's
    /// "maximum concurrent connections" at a time. Reports come back in
    /// mailbox address order.
    pub async fn test_all_mailboxes(
        &self,
        profile: &ProfileId,
        options: &TestOptions,
    ) -> Result<Vec<TestReport>> {
        let profile = self.get_profile(profile).await?;
        let mailboxes = self.list_mailboxes(Some(&profile.id)).await?;
        let limit = usize::from(profile.processing.max_concurrent_connections.max(1));
        let mut reports: Vec<(usize, TestReport)> =
            futures::stream::iter(mailboxes.into_iter().enumerate())
                .map(|(i, m)| async move {
                    self.test_and_enable_with(&m.id, options)
                        .await
                        .map(|r| (i, r))
                })
                .buffer_unordered(limit)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_>>()?;
        reports.sort_by_key(|(i, _)| *i);
        Ok(reports.into_iter().map(|(_, r)| r).collect())
    }
}

/// The "Test Message" Dynamics sends to the mailbox itself.
fn test_message(mailbox: &Mailbox) -> Result<lettre::Message> {
    let address: lettre::message::Mailbox = mailbox
        .email
        .parse()
        .map_err(|e| Error::validation("email", format!("cannot be used as a sender: {e}")))?;
    lettre::Message::builder()
        .from(address.clone())
        .to(address)
        .subject("Test Message")
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
        let reply = steps.run(Step::Send, client.send_message(message)).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MailboxSpec;

    fn failed(direction: Direction, step: &str, code: &str, transient: bool) -> DirectionReport {
        DirectionReport {
            direction,
            protocol: "IMAP".into(),
            server: "h:1".into(),
            success: false,
            steps: Vec::new(),
            diagnosis: Some(Diagnosis {
                step: step.into(),
                code: code.into(),
                message: format!("{code} happened"),
                next_action: "Do something.".into(),
                transient,
            }),
            summary: String::new(),
            duration_ms: 0,
        }
    }

    #[test]
    fn one_alert_per_cause_naming_both_directions() {
        let mut mailbox = Mailbox::from_spec(MailboxSpec::user("a@example.com"), None).unwrap();
        let incoming = failed(Direction::Incoming, "credentials", "token_revoked", false);
        let outgoing = failed(Direction::Outgoing, "credentials", "token_revoked", false);
        alert_failures(&mut mailbox, &[&incoming, &outgoing]);
        assert_eq!(mailbox.alerts.len(), 1, "{:?}", mailbox.alerts);
        assert_eq!(mailbox.alerts[0].level, AlertLevel::Error);
        assert!(
            mailbox.alerts[0]
                .message
                .starts_with("incoming and outgoing sync for a@example.com is disabled")
        );

        let mut mailbox = Mailbox::from_spec(MailboxSpec::user("a@example.com"), None).unwrap();
        let incoming = failed(Direction::Incoming, "connect", "network", true);
        let outgoing = failed(Direction::Outgoing, "authenticate", "auth_rejected", false);
        alert_failures(&mut mailbox, &[&incoming, &outgoing]);
        let codes: Vec<_> = mailbox
            .alerts
            .iter()
            .map(|a| (a.level, a.code.as_str()))
            .collect();
        assert_eq!(
            codes,
            [
                (AlertLevel::Warning, "network"),
                (AlertLevel::Error, "auth_rejected")
            ]
        );
        assert!(mailbox.alerts[0].message.starts_with("incoming test of"));
    }
}
