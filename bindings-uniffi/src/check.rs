//! Test & Enable: the Dynamics "Test & Enable Mailbox" action and its report.

use std::time::SystemTime;

use crate::convert::{
    from_system_time, mailbox_id as parse_mailbox_id, mirror_enum, profile_id as parse_profile_id,
    to_system_time,
};
use crate::directory::MailSync;
use crate::error::{Result, guard, guard_async};
use crate::model::{TestOutcome, json_error};

mirror_enum! {
    /// Which way mail flows (`incoming` | `outgoing`).
    Direction => mailsync::check::Direction {
        /// Mail read from the server (IMAP/POP3).
        Incoming,
        /// Mail sent through the server (SMTP).
        Outgoing,
    }
}

/// One step of a check.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct StepResult {
    /// Stable step name: `credentials`, `connect`, `tls`, `greeting`,
    /// `capabilities`, `authenticate`, `select_inbox`, `stat`, `ehlo`, `send`.
    pub step: String,
    /// Whether it passed.
    pub ok: bool,
    /// How long it took, in milliseconds.
    pub duration_ms: i64,
    /// What was observed, or the error message.
    pub detail: Option<String>,
}

/// Why a direction failed.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Diagnosis {
    /// The step that failed.
    pub step: String,
    /// Stable error code (one of `errorCodes()`).
    pub code: String,
    /// What happened.
    pub message: String,
    /// What the user or admin should do.
    pub next_action: String,
    /// Whether the check will pass later without changes.
    pub transient: bool,
}

/// The result of one direction's check.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
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
    pub duration_ms: i64,
}

/// The outcome of `testAndEnable`. Also the core's JSON via `toJson()`.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TestReport {
    /// The mailbox tested.
    pub mailbox_id: String,
    /// Its address.
    pub email: String,
    /// Incoming check (absent when incoming delivery is none).
    pub incoming: Option<DirectionReport>,
    /// Outgoing check (absent when outgoing delivery is none).
    pub outgoing: Option<DirectionReport>,
    /// Success when every check that ran passed.
    pub outcome: TestOutcome,
    /// Whether incoming sync is enabled after the test.
    pub incoming_enabled: bool,
    /// Whether outgoing sync is enabled after the test.
    pub outgoing_enabled: bool,
    /// When the test started.
    pub tested_at: SystemTime,
}

/// Options for `testAndEnableWith` / `testAllMailboxes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct TestOptions {
    /// Also send a "Test Message" from the mailbox to itself, as Dynamics does.
    #[uniffi(default = false)]
    pub send_test_message: bool,
}

impl From<TestOptions> for mailsync::check::TestOptions {
    fn from(o: TestOptions) -> Self {
        mailsync::check::TestOptions {
            send_test_message: o.send_test_message,
        }
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn ms_back(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl From<mailsync::check::StepResult> for StepResult {
    fn from(s: mailsync::check::StepResult) -> Self {
        StepResult {
            step: s.step,
            ok: s.ok,
            duration_ms: ms(s.duration_ms),
            detail: s.detail,
        }
    }
}

impl From<StepResult> for mailsync::check::StepResult {
    fn from(s: StepResult) -> Self {
        mailsync::check::StepResult {
            step: s.step,
            ok: s.ok,
            duration_ms: ms_back(s.duration_ms),
            detail: s.detail,
        }
    }
}

impl From<mailsync::check::Diagnosis> for Diagnosis {
    fn from(d: mailsync::check::Diagnosis) -> Self {
        Diagnosis {
            step: d.step,
            code: d.code,
            message: d.message,
            next_action: d.next_action,
            transient: d.transient,
        }
    }
}

impl From<Diagnosis> for mailsync::check::Diagnosis {
    fn from(d: Diagnosis) -> Self {
        mailsync::check::Diagnosis {
            step: d.step,
            code: d.code,
            message: d.message,
            next_action: d.next_action,
            transient: d.transient,
        }
    }
}

impl From<mailsync::check::DirectionReport> for DirectionReport {
    fn from(d: mailsync::check::DirectionReport) -> Self {
        DirectionReport {
            direction: d.direction.into(),
            protocol: d.protocol,
            server: d.server,
            success: d.success,
            steps: d.steps.into_iter().map(Into::into).collect(),
            diagnosis: d.diagnosis.map(Into::into),
            summary: d.summary,
            duration_ms: ms(d.duration_ms),
        }
    }
}

impl From<DirectionReport> for mailsync::check::DirectionReport {
    fn from(d: DirectionReport) -> Self {
        mailsync::check::DirectionReport {
            direction: d.direction.into(),
            protocol: d.protocol,
            server: d.server,
            success: d.success,
            steps: d.steps.into_iter().map(Into::into).collect(),
            diagnosis: d.diagnosis.map(Into::into),
            summary: d.summary,
            duration_ms: ms_back(d.duration_ms),
        }
    }
}

impl From<mailsync::check::TestReport> for TestReport {
    fn from(r: mailsync::check::TestReport) -> Self {
        TestReport {
            mailbox_id: r.mailbox_id.to_string(),
            email: r.email,
            incoming: r.incoming.map(Into::into),
            outgoing: r.outgoing.map(Into::into),
            outcome: r.outcome.into(),
            incoming_enabled: r.incoming_enabled,
            outgoing_enabled: r.outgoing_enabled,
            tested_at: to_system_time(r.tested_at),
        }
    }
}

impl TestReport {
    /// Back to the core report (the host may have edited the record).
    fn to_core(&self) -> mailsync::Result<mailsync::check::TestReport> {
        let r = self.clone();
        Ok(mailsync::check::TestReport {
            mailbox_id: parse_mailbox_id(&r.mailbox_id)?,
            email: r.email,
            incoming: r.incoming.map(Into::into),
            outgoing: r.outgoing.map(Into::into),
            outcome: r.outcome.into(),
            incoming_enabled: r.incoming_enabled,
            outgoing_enabled: r.outgoing_enabled,
            tested_at: from_system_time(r.tested_at),
        })
    }
}

#[uniffi::export]
impl TestReport {
    /// Whether every check that ran passed.
    pub fn is_success(&self) -> Result<bool> {
        guard(|| Ok(self.to_core()?.is_success()))
    }

    /// The first failure (incoming before outgoing), if any.
    pub fn first_failure(&self) -> Result<Option<Diagnosis>> {
        guard(|| Ok(self.to_core()?.first_failure().cloned().map(Into::into)))
    }

    /// The core's JSON of the report (snake_case keys, RFC 3339 time).
    pub fn to_json(&self) -> Result<String> {
        guard(|| serde_json::to_string(&self.to_core()?).map_err(json_error))
    }
}

#[uniffi::export]
impl MailSync {
    /// Tests the mailbox's incoming and outgoing servers step by step and
    /// enables the directions that pass (a permanent failure disables the
    /// direction and raises an alert). Failures of the servers are in the
    /// report, not thrown; thrown are only `not_found` / `validation` /
    /// store errors.
    pub async fn test_and_enable(&self, mailbox_id: String) -> Result<TestReport> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_mailbox_id(&mailbox_id)?;
            inner.test_and_enable(&id).await.map(TestReport::from)
        })
        .await
    }

    /// `testAndEnable` with options (e.g. send a test message).
    pub async fn test_and_enable_with(
        &self,
        mailbox_id: String,
        options: TestOptions,
    ) -> Result<TestReport> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_mailbox_id(&mailbox_id)?;
            inner
                .test_and_enable_with(&id, &options.into())
                .await
                .map(TestReport::from)
        })
        .await
    }

    /// Tests every mailbox of a profile.
    pub async fn test_all_mailboxes(
        &self,
        profile_id: String,
        options: TestOptions,
    ) -> Result<Vec<TestReport>> {
        let inner = self.inner.clone();
        guard_async(async move {
            let id = parse_profile_id(&profile_id)?;
            let reports = inner.test_all_mailboxes(&id, &options.into()).await?;
            Ok(reports.into_iter().map(TestReport::from).collect())
        })
        .await
    }
}
