//! The pages: askama templates (`templates/`, HTML-escaped by default —
//! nothing is ever marked safe) and the view models they print. Every text
//! that reaches a page — alerts, error messages, provider replies, profile
//! names, mail headers — goes through askama's escaping.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use mailsync::Timestamp;
use mailsync::checks::{DirectionReport, TestReport};
use mailsync::lifecycle::{DirectionStatus, GrantStatus, TestStatus};

use crate::session::Flash;

/// Renders a template, or a plain 500 when it cannot be rendered.
pub fn render<T: Template>(template: &T) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("template: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "page could not be rendered",
            )
                .into_response()
        }
    }
}

/// A time for people (RFC 3339, to the second), or "—".
pub fn when(at: Option<Timestamp>) -> String {
    at.map(|t| t.to_rfc3339_seconds())
        .unwrap_or_else(|| "—".into())
}

/// One notice on a page.
#[derive(Debug, Clone)]
pub struct FlashView {
    /// `notice` or `error`.
    pub kind: &'static str,
    /// The text.
    pub text: String,
    /// For errors: the stable code.
    pub code: String,
    /// For errors: what to do next.
    pub next_action: String,
}

/// What every page has: the CSRF token for its forms, the navigation and
/// the notices.
#[derive(Debug, Clone)]
pub struct Nav {
    /// The session's CSRF token.
    pub csrf: String,
    /// Notices for this page.
    pub flashes: Vec<FlashView>,
}

impl Nav {
    /// A page of the session, with its pending notices (a test report is
    /// handed back for the mailbox page).
    pub fn new(csrf: &str, flashes: Vec<Flash>) -> (Nav, Option<TestReport>) {
        let mut report = None;
        let mut views = Vec::new();
        for flash in flashes {
            match flash {
                Flash::Notice(text) => views.push(FlashView {
                    kind: "notice",
                    text,
                    code: String::new(),
                    next_action: String::new(),
                }),
                Flash::Error {
                    code,
                    message,
                    next_action,
                } => views.push(FlashView {
                    kind: "error",
                    text: message,
                    code,
                    next_action,
                }),
                Flash::Report(r) => report = Some(*r),
            }
        }
        (
            Nav {
                csrf: csrf.to_owned(),
                flashes: views,
            },
            report,
        )
    }

    /// No session (error pages outside a session).
    pub fn none() -> Nav {
        Nav {
            csrf: String::new(),
            flashes: Vec::new(),
        }
    }
}

/// An error page.
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// Navigation.
    pub nav: Nav,
    /// Heading.
    pub title: String,
    /// Stable code.
    pub code: String,
    /// What happened.
    pub message: String,
    /// What to do.
    pub next_action: String,
}

/// A mailbox row on the home page.
#[derive(Debug, Clone)]
pub struct MailboxRow {
    /// Id (for the link).
    pub id: String,
    /// Address.
    pub email: String,
    /// Profile name.
    pub profile: String,
    /// Grant, for people.
    pub grant: String,
    /// Incoming status.
    pub incoming: String,
    /// Outgoing status.
    pub outgoing: String,
    /// Messages the CRM holds.
    pub messages: i64,
}

/// A profile choice in a form.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The value sent.
    pub value: String,
    /// The label.
    pub label: String,
    /// Preselected.
    pub selected: bool,
}

/// The home page: mailboxes.
#[derive(Template)]
#[template(path = "home.html")]
pub struct HomePage {
    /// Navigation.
    pub nav: Nav,
    /// Mailboxes.
    pub mailboxes: Vec<MailboxRow>,
    /// Profiles to choose from.
    pub profiles: Vec<Choice>,
    /// Incoming filters.
    pub filters: Vec<Choice>,
}

/// A profile row on the admin page.
#[derive(Debug, Clone)]
pub struct ProfileRow {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Server type and authentication.
    pub kind: String,
    /// Incoming endpoint.
    pub incoming: String,
    /// Outgoing endpoint.
    pub outgoing: String,
    /// Mailboxes on it.
    pub used: u32,
    /// Its capacity.
    pub capacity: u32,
    /// Default for new mailboxes.
    pub default: bool,
    /// Processing options, one line.
    pub processing: String,
}

/// Defaults for the new-profile form.
#[derive(Debug, Clone)]
pub struct ProfileDefaults {
    /// Incoming host.
    pub imap_host: String,
    /// IMAP port.
    pub imap_port: u16,
    /// Outgoing host.
    pub smtp_host: String,
    /// SMTP port.
    pub smtp_port: u16,
    /// Where the defaults come from.
    pub note: String,
}

/// The admin page.
#[derive(Template)]
#[template(path = "admin.html")]
pub struct AdminPage {
    /// Navigation.
    pub nav: Nav,
    /// Client id.
    pub client_id: String,
    /// A secret is stored.
    pub secret_stored: bool,
    /// The secret's mask.
    pub mask: &'static str,
    /// Environment URL.
    pub environment_url: String,
    /// Derived origin (or why it cannot be derived).
    pub origin: String,
    /// Derived redirect URI.
    pub redirect_uri: String,
    /// The redirect URI does not come back to this app.
    pub redirect_elsewhere: bool,
    /// This app's own base URL.
    pub base_url: String,
    /// Internal.
    pub internal: bool,
    /// Testing.
    pub testing: bool,
    /// Test users, one per line.
    pub test_users: String,
    /// How many test users.
    pub test_user_count: usize,
    /// Consent-screen warnings.
    pub warnings: Vec<String>,
    /// Profiles.
    pub profiles: Vec<ProfileRow>,
    /// New-profile defaults.
    pub defaults: ProfileDefaults,
    /// The client is complete enough to create profiles.
    pub client_ready: bool,
    /// The local stack's client id, when the app runs against it.
    pub stack_hint: String,
}

/// A mailbox on a profile page.
#[derive(Debug, Clone)]
pub struct ProfileMailbox {
    /// Id.
    pub id: String,
    /// Address.
    pub email: String,
}

/// A profile page.
#[derive(Template)]
#[template(path = "profile.html")]
pub struct ProfilePage {
    /// Navigation.
    pub nav: Nav,
    /// The profile.
    pub row: ProfileRow,
    /// Minimum polling interval.
    pub min_polling: u16,
    /// Maximum concurrent connections.
    pub max_connections: u16,
    /// Connection timeout.
    pub timeout: u16,
    /// Process email received after (RFC 3339 or empty).
    pub process_after: String,
    /// Move failed mail to Undeliverable.
    pub move_failed: bool,
    /// Alert the owner on major events.
    pub alert_owner: bool,
    /// The last profile test.
    pub last_test: String,
    /// Its mailboxes.
    pub mailboxes: Vec<ProfileMailbox>,
}

/// One step of a Test & Enable report.
#[derive(Debug, Clone)]
pub struct StepView {
    /// Step name.
    pub step: String,
    /// Passed.
    pub ok: bool,
    /// Duration.
    pub ms: u32,
    /// Detail.
    pub detail: String,
}

/// One direction of a Test & Enable report.
#[derive(Debug, Clone)]
pub struct DirectionView {
    /// Incoming / outgoing.
    pub direction: String,
    /// Protocol and server.
    pub server: String,
    /// Passed.
    pub success: bool,
    /// One line.
    pub summary: String,
    /// Steps.
    pub steps: Vec<StepView>,
    /// Failed step.
    pub failed_step: String,
    /// Error code.
    pub code: String,
    /// What happened.
    pub message: String,
    /// What to do.
    pub next_action: String,
    /// Whether it may pass later without changes.
    pub transient: bool,
}

impl DirectionView {
    fn from(direction: &str, r: &DirectionReport) -> DirectionView {
        let d = r.diagnosis.as_ref();
        DirectionView {
            direction: direction.to_owned(),
            server: format!("{} {}", r.protocol, r.server),
            success: r.success,
            summary: r.summary.clone(),
            steps: r
                .steps
                .iter()
                .map(|s| StepView {
                    step: s.step.clone(),
                    ok: s.ok,
                    ms: s.duration_ms,
                    detail: s.detail.clone().unwrap_or_default(),
                })
                .collect(),
            failed_step: d.map(|d| d.step.clone()).unwrap_or_default(),
            code: d.map(|d| d.code.as_str().to_owned()).unwrap_or_default(),
            message: d.map(|d| d.message.clone()).unwrap_or_default(),
            next_action: d.map(|d| d.next_action.clone()).unwrap_or_default(),
            transient: d.is_some_and(|d| d.transient),
        }
    }
}

/// A Test & Enable report.
#[derive(Debug, Clone)]
pub struct ReportView {
    /// Success / failure / warning.
    pub outcome: String,
    /// When.
    pub tested_at: String,
    /// Directions that ran.
    pub directions: Vec<DirectionView>,
    /// Incoming enabled afterwards.
    pub incoming_enabled: bool,
    /// Outgoing enabled afterwards.
    pub outgoing_enabled: bool,
}

impl ReportView {
    /// The view of a report.
    pub fn from(report: &TestReport) -> ReportView {
        let mut directions = Vec::new();
        if let Some(r) = &report.incoming {
            directions.push(DirectionView::from("Incoming", r));
        }
        if let Some(r) = &report.outgoing {
            directions.push(DirectionView::from("Outgoing", r));
        }
        ReportView {
            outcome: format!("{:?}", report.outcome).to_lowercase(),
            tested_at: report.tested_at.to_rfc3339_seconds(),
            directions,
            incoming_enabled: report.incoming_enabled,
            outgoing_enabled: report.outgoing_enabled,
        }
    }
}

/// A direction's status on the mailbox page.
#[derive(Debug, Clone)]
pub struct DirectionStatusView {
    /// Incoming / outgoing.
    pub direction: String,
    /// How mail flows that way (server-side sync, none, …).
    pub delivery: String,
    /// `enabled`, `retrying`, `disabled`, `not_tested`.
    pub status: String,
    /// Details for people.
    pub detail: String,
    /// The last Test & Enable.
    pub last_test: String,
    /// Sync counters and schedule.
    pub sync: String,
}

/// Status text of a direction.
pub fn direction_status(status: &DirectionStatus) -> (String, String) {
    match status {
        DirectionStatus::NotTested {} => (
            "not_tested".into(),
            "Run Test & Enable to start syncing.".into(),
        ),
        DirectionStatus::Enabled { since } => ("enabled".into(), format!("since {since}")),
        DirectionStatus::Retrying {
            failures,
            code,
            reason,
            next_attempt,
        } => (
            "retrying".into(),
            format!("{failures} failure(s), last [{code}] {reason}; next attempt {next_attempt}"),
        ),
        DirectionStatus::Disabled {
            code,
            reason,
            since,
        } => (
            "disabled".into(),
            format!(
                "[{code}] {reason} (since {since}). Next: {}",
                code.next_action()
            ),
        ),
    }
}

/// Last-test text.
pub fn test_status(status: &TestStatus) -> String {
    match status {
        TestStatus::NotRun {} => "never run".into(),
        TestStatus::Success { at } => format!("passed at {at}"),
        TestStatus::Failure { at, code, reason } => format!("failed at {at}: [{code}] {reason}"),
    }
}

/// Grant text and the short status.
pub fn grant_status(grant: &GrantStatus) -> (String, String) {
    match grant {
        GrantStatus::NotConnected {} => ("not_connected".into(), "Not connected to Gmail.".into()),
        GrantStatus::Connected { account, since } => (
            "connected".into(),
            format!("Connected as {account} since {since}."),
        ),
        GrantStatus::NeedsReconsent {
            code,
            reason,
            since,
        } => (
            "needs_reconsent".into(),
            format!(
                "Needs consent again since {since}: [{code}] {reason}. Next: {}",
                code.next_action()
            ),
        ),
    }
}

/// An alert on the mailbox page.
#[derive(Debug, Clone)]
pub struct AlertView {
    /// info / warning / error.
    pub level: String,
    /// Stable code.
    pub code: String,
    /// Text (may hold provider-supplied text: escaped like everything).
    pub message: String,
    /// When.
    pub at: String,
}

/// A message on the mailbox page.
#[derive(Debug, Clone)]
pub struct MessageView {
    /// Subject.
    pub subject: String,
    /// From.
    pub from: String,
    /// To.
    pub to: String,
    /// Date.
    pub date: String,
    /// Message-ID.
    pub message_id: String,
    /// In-Reply-To.
    pub in_reply_to: String,
    /// References.
    pub references: String,
    /// Thread id.
    pub thread: String,
    /// The engine's key.
    pub key: String,
    /// Size.
    pub size: i64,
    /// What it replies to, when the CRM holds the parent.
    pub replies_to: String,
}

/// A message of the mailbox's outbox.
#[derive(Debug, Clone)]
pub struct OutboxView {
    /// The CRM's id.
    pub id: String,
    /// Recipients.
    pub to: String,
    /// Subject.
    pub subject: String,
    /// When it was queued.
    pub queued_at: String,
    /// The engine's state: `pending`, `sending`, `sent`, `failed`,
    /// `deferred`, `unknown`; `queued` before the engine first saw it.
    pub state: String,
    /// `<Message-ID>`, or "—" before the engine assigned one.
    pub message_id: String,
    /// Attempts so far.
    pub attempts: u32,
    /// The last error's stable code (`send_rejected`, `send_deferred`, …),
    /// empty when there is none.
    pub error_code: String,
    /// The server's last reply (its `250` once sent), or what failed, with
    /// any refused recipients; a deferred message's next attempt.
    pub detail: String,
}

/// The mailbox page.
#[derive(Template)]
#[template(path = "mailbox.html")]
pub struct MailboxPage {
    /// Navigation.
    pub nav: Nav,
    /// Id.
    pub id: String,
    /// Address.
    pub email: String,
    /// Profile name (or none).
    pub profile: String,
    /// Profile id for the link (empty: none).
    pub profile_id: String,
    /// Short grant status.
    pub grant: String,
    /// Grant text.
    pub grant_text: String,
    /// A consent is out.
    pub pending_consent: String,
    /// Directions.
    pub directions: Vec<DirectionStatusView>,
    /// The latest Test & Enable report of this session.
    pub report: Option<ReportView>,
    /// Alerts, newest first.
    pub alerts: Vec<AlertView>,
    /// Messages, newest first.
    pub messages: Vec<MessageView>,
    /// How many the CRM holds.
    pub message_count: i64,
    /// Incoming filter choices.
    pub filters: Vec<Choice>,
    /// Process email from.
    pub process_from: String,
    /// Outgoing mail is enabled (else queued mail waits for Test & Enable).
    pub outgoing_enabled: bool,
    /// The outbox, newest first.
    pub outbox: Vec<OutboxView>,
}

/// The OAuth callback's outcome.
#[derive(Template)]
#[template(path = "callback.html")]
pub struct CallbackPage {
    /// Navigation.
    pub nav: Nav,
    /// Connected.
    pub success: bool,
    /// The account that consented.
    pub account: String,
    /// The mailbox's address.
    pub email: String,
    /// The mailbox (for the link back; empty when unknown).
    pub mailbox_id: String,
    /// Error code.
    pub code: String,
    /// What happened.
    pub message: String,
    /// What to do.
    pub next_action: String,
}
