//! Test & Enable: `testAndEnable`, `testAndEnableWith`, `testAllMailboxes`
//! and the `TestReport` they resolve with.

use mailsync::check;
use napi::Env;
use napi::bindgen_prelude::PromiseRaw;
use napi_derive::napi;

use crate::enums::TestOutcome;
use crate::error::{guard, promise};
use crate::store::MailSync;
use crate::{parse_mailbox_id, parse_profile_id, rfc3339};

/// Which way mail flows.
#[napi(string_enum = "snake_case")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Mail read from the server (IMAP/POP3).
    Incoming,
    /// Mail sent through the server (SMTP).
    Outgoing,
}

impl From<check::Direction> for Direction {
    fn from(d: check::Direction) -> Self {
        match d {
            check::Direction::Incoming => Direction::Incoming,
            check::Direction::Outgoing => Direction::Outgoing,
        }
    }
}

/// One step of a check.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Stable step name: `credentials`, `connect`, `tls`, `greeting`,
    /// `capabilities`, `authenticate`, `select_inbox`, `stat`, `ehlo`, `send`.
    pub step: String,
    /// Whether it passed.
    pub ok: bool,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// What was observed, or the error message; `null` if nothing.
    pub detail: Option<String>,
}

/// Why a direction failed.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct Diagnosis {
    /// The step that failed.
    pub step: String,
    /// Stable error code.
    #[napi(ts_type = "ErrorCode")]
    pub code: String,
    /// What happened.
    pub message: String,
    /// What the user or admin should do.
    pub next_action: String,
    /// Whether the check will pass later without changes.
    pub transient: bool,
}

impl From<&check::Diagnosis> for Diagnosis {
    fn from(d: &check::Diagnosis) -> Self {
        Diagnosis {
            step: d.step.clone(),
            code: d.code.clone(),
            message: d.message.clone(),
            next_action: d.next_action.clone(),
            transient: d.transient,
        }
    }
}

/// The result of one direction's check.
#[napi(object)]
#[derive(Debug, Clone)]
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
    /// The failure, or `null`.
    pub diagnosis: Option<Diagnosis>,
    /// One-line summary for people.
    pub summary: String,
    /// Total time, in milliseconds.
    pub duration_ms: f64,
}

impl From<&check::DirectionReport> for DirectionReport {
    fn from(r: &check::DirectionReport) -> Self {
        DirectionReport {
            direction: r.direction.into(),
            protocol: r.protocol.clone(),
            server: r.server.clone(),
            success: r.success,
            steps: r
                .steps
                .iter()
                .map(|s| StepResult {
                    step: s.step.clone(),
                    ok: s.ok,
                    duration_ms: s.duration_ms as f64,
                    detail: s.detail.clone(),
                })
                .collect(),
            diagnosis: r.diagnosis.as_ref().map(Diagnosis::from),
            summary: r.summary.clone(),
            duration_ms: r.duration_ms as f64,
        }
    }
}

/// Options of `testAndEnableWith` / `testAllMailboxes`.
#[napi(object)]
#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    /// Also send a "Test Message" from the mailbox to itself (default false).
    pub send_test_message: Option<bool>,
}

impl TestOptions {
    fn to_core(&self) -> check::TestOptions {
        check::TestOptions {
            send_test_message: self.send_test_message.unwrap_or(false),
        }
    }
}

/// The outcome of Test & Enable for one mailbox.
#[napi]
pub struct TestReport {
    inner: check::TestReport,
}

#[napi]
impl TestReport {
    /// The mailbox tested.
    #[napi(getter)]
    pub fn mailbox_id(&self) -> String {
        self.inner.mailbox_id.to_string()
    }

    /// Its address.
    #[napi(getter)]
    pub fn email(&self) -> String {
        self.inner.email.clone()
    }

    /// Incoming check (`null` when incoming delivery is none).
    #[napi(getter)]
    pub fn incoming(&self) -> Option<DirectionReport> {
        self.inner.incoming.as_ref().map(DirectionReport::from)
    }

    /// Outgoing check (`null` when outgoing delivery is none).
    #[napi(getter)]
    pub fn outgoing(&self) -> Option<DirectionReport> {
        self.inner.outgoing.as_ref().map(DirectionReport::from)
    }

    /// Success when every check that ran passed.
    #[napi(getter)]
    pub fn outcome(&self) -> TestOutcome {
        self.inner.outcome.into()
    }

    /// Whether incoming sync is enabled after the test.
    #[napi(getter)]
    pub fn incoming_enabled(&self) -> bool {
        self.inner.incoming_enabled
    }

    /// Whether outgoing sync is enabled after the test.
    #[napi(getter)]
    pub fn outgoing_enabled(&self) -> bool {
        self.inner.outgoing_enabled
    }

    /// When the test started (RFC 3339).
    #[napi(getter)]
    pub fn tested_at(&self) -> String {
        rfc3339(self.inner.tested_at)
    }

    /// Whether every check that ran passed.
    #[napi]
    pub fn is_success(&self) -> bool {
        self.inner.is_success()
    }

    /// The first failure (incoming first), or `null`.
    #[napi]
    pub fn first_failure(&self) -> Option<Diagnosis> {
        self.inner.first_failure().map(Diagnosis::from)
    }

    /// The core's JSON form (snake_case keys).
    #[napi(js_name = "toJSON", ts_return_type = "Record<string, unknown>")]
    pub fn to_json(&self, env: &Env) -> napi::Result<serde_json::Value> {
        guard(env, || crate::json(&self.inner))
    }

    /// `TestReport(<email>, <outcome>)`.
    #[napi(js_name = "toString")]
    pub fn to_display(&self) -> String {
        let outcome = match self.outcome() {
            TestOutcome::Success => "success",
            TestOutcome::Failure => "failure",
            TestOutcome::Warning => "warning",
        };
        format!("TestReport({}, {outcome})", self.inner.email)
    }
}

fn report(inner: check::TestReport) -> TestReport {
    TestReport { inner }
}

#[napi]
impl MailSync {
    /// Tests the mailbox's incoming and outgoing settings step by step and
    /// enables the directions that pass. Failures of a check are in the
    /// report (`firstFailure()`); the promise rejects only when the test
    /// cannot run (`not_found`, store errors).
    #[napi]
    pub fn test_and_enable<'env>(
        &self,
        env: &'env Env,
        mailbox_id: String,
    ) -> napi::Result<PromiseRaw<'env, TestReport>> {
        let sync = self.inner.clone();
        promise(
            env,
            async move { sync.test_and_enable(&parse_mailbox_id(&mailbox_id)?).await },
            report,
        )
    }

    /// `testAndEnable` with options (e.g. `{ sendTestMessage: true }`).
    #[napi]
    pub fn test_and_enable_with<'env>(
        &self,
        env: &'env Env,
        mailbox_id: String,
        options: TestOptions,
    ) -> napi::Result<PromiseRaw<'env, TestReport>> {
        let (sync, options) = (self.inner.clone(), options.to_core());
        promise(
            env,
            async move {
                sync.test_and_enable_with(&parse_mailbox_id(&mailbox_id)?, &options)
                    .await
            },
            report,
        )
    }

    /// Tests and enables every mailbox of a profile (at most its maximum
    /// concurrent connections at a time); reports in address order.
    #[napi]
    pub fn test_all_mailboxes<'env>(
        &self,
        env: &'env Env,
        profile_id: String,
        options: Option<TestOptions>,
    ) -> napi::Result<PromiseRaw<'env, Vec<TestReport>>> {
        let sync = self.inner.clone();
        let options = options.unwrap_or_default().to_core();
        promise(
            env,
            async move {
                sync.test_all_mailboxes(&parse_profile_id(&profile_id)?, &options)
                    .await
            },
            |reports| reports.into_iter().map(report).collect(),
        )
    }
}
