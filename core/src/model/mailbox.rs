//! Mailbox: one user's or queue's address synchronized through a profile.
//!
//! Mirrors the Dynamics 365 `mailbox` record (reference.md §A.2): delivery
//! methods with their rules, approval, per-direction test status, enabled
//! flags, the OAuth connection state and alerts.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::secret::Secret;
use super::validate;
use super::{MailboxId, ProfileId, TestOutcome};
use crate::error::{Error, Result};

/// Who the mailbox belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Owner {
    /// A CRM user (by the CRM's user name or id).
    User(String),
    /// A CRM queue.
    Queue(String),
}

/// How incoming mail reaches the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncomingDelivery {
    /// Not processed.
    None,
    /// Server-side synchronization (this library).
    ServerSideSync,
    /// The legacy Email Router.
    EmailRouter,
    /// A forward mailbox that collects mail forwarded from other mailboxes.
    ForwardMailbox,
}

/// How outgoing mail leaves the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutgoingDelivery {
    /// Not sent.
    None,
    /// Server-side synchronization (this library).
    ServerSideSync,
    /// The legacy Email Router.
    EmailRouter,
}

/// Email address approval (Dynamics "Email Address Status").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Not set.
    #[default]
    Empty,
    /// Approved by an admin.
    Approved,
    /// Waiting for an admin.
    PendingApproval,
    /// Rejected by an admin.
    Rejected,
}

/// Result of the last test of one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum TestStatus {
    /// Never tested.
    #[default]
    NotRun,
    /// Passed.
    Success {
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// Failed.
    Failure {
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
        /// Stable error code of the failure.
        code: String,
        /// What went wrong.
        reason: String,
    },
}

impl TestStatus {
    /// The outcome, if the test ran.
    pub fn outcome(&self) -> Option<TestOutcome> {
        match self {
            TestStatus::NotRun => None,
            TestStatus::Success { .. } => Some(TestOutcome::Success),
            TestStatus::Failure { .. } => Some(TestOutcome::Failure),
        }
    }
}

/// Whether the mailbox holds working OAuth tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ConnectionState {
    /// Never connected, or disconnected.
    #[default]
    NotConnected,
    /// A consent URL was issued; waiting for the redirect.
    AwaitingConsent {
        /// When the pending consent expires.
        #[serde(with = "time::serde::rfc3339")]
        expires_at: OffsetDateTime,
    },
    /// Tokens are stored and valid as far as we know.
    Connected {
        /// The Google account that consented.
        account: String,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        since: OffsetDateTime,
    },
    /// The grant stopped working; the owner must consent again.
    NeedsReconsent {
        /// Stable code of the cause (e.g. `token_revoked`).
        code: String,
        /// Explanation and likely cause, for people.
        reason: String,
    },
}

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertLevel {
    /// Information (e.g. the mailbox was enabled).
    Info,
    /// Something to look at; work continues.
    Warning,
    /// Work stopped until someone acts.
    Error,
}

/// An entry on the mailbox's alerts wall.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Level.
    pub level: AlertLevel,
    /// Stable code (an error code, or an event such as `mailbox_enabled`).
    pub code: String,
    /// Text for people.
    pub message: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The most alerts kept per mailbox; older ones are dropped first.
pub const MAX_ALERTS: usize = 50;

/// User name and password for "credentials per mailbox" profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailboxCredentials {
    /// User name.
    pub username: String,
    /// Password: sealed at rest, never serialized.
    #[serde(skip)]
    pub password: Option<Secret>,
}

/// A mailbox record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mailbox {
    /// Stable id.
    pub id: MailboxId,
    /// Display name (defaults to the address), at most 200 characters.
    pub name: String,
    /// Email address, lower-cased.
    pub email: String,
    /// User or queue.
    pub owner: Owner,
    /// Server profile (none until one is assigned).
    pub profile_id: Option<ProfileId>,
    /// Incoming delivery method.
    pub incoming_delivery: IncomingDelivery,
    /// Outgoing delivery method.
    pub outgoing_delivery: OutgoingDelivery,
    /// Delete mail from the server after processing (forward and queue mailboxes only).
    pub delete_after_processing: bool,
    /// Approval of the address.
    pub approval: ApprovalStatus,
    /// Last incoming test.
    pub incoming_test: TestStatus,
    /// Last outgoing test.
    pub outgoing_test: TestStatus,
    /// Incoming sync enabled.
    pub incoming_enabled: bool,
    /// Outgoing sync enabled.
    pub outgoing_enabled: bool,
    /// OAuth connection state.
    pub connection: ConnectionState,
    /// Alerts, newest last.
    pub alerts: Vec<Alert>,
    /// Per-mailbox credentials (password profiles only).
    pub credentials: Option<MailboxCredentials>,
    /// Created at.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What a caller supplies to create a mailbox; the rest is defaulted.
#[derive(Debug, Clone, PartialEq)]
pub struct MailboxSpec {
    /// Email address.
    pub email: String,
    /// Display name; defaults to the address.
    pub name: Option<String>,
    /// Owner; defaults to the user named by the address.
    pub owner: Option<Owner>,
    /// Profile; defaults to the default profile.
    pub profile_id: Option<ProfileId>,
    /// Default: server-side sync.
    pub incoming_delivery: IncomingDelivery,
    /// Default: server-side sync.
    pub outgoing_delivery: OutgoingDelivery,
    /// Default: false.
    pub delete_after_processing: bool,
    /// Default: approved (set to pending where approval is required).
    pub approval: ApprovalStatus,
    /// Per-mailbox credentials.
    pub credentials: Option<MailboxCredentials>,
    /// When the chosen profile is full, place the mailbox on another profile
    /// with the same OAuth client that has room.
    pub allow_spill_over: bool,
}

impl MailboxSpec {
    /// A user's mailbox with server-side sync in both directions.
    pub fn user(email: impl Into<String>) -> Self {
        MailboxSpec {
            email: email.into(),
            name: None,
            owner: None,
            profile_id: None,
            incoming_delivery: IncomingDelivery::ServerSideSync,
            outgoing_delivery: OutgoingDelivery::ServerSideSync,
            delete_after_processing: false,
            approval: ApprovalStatus::Approved,
            credentials: None,
            allow_spill_over: false,
        }
    }

    /// A queue's mailbox.
    pub fn queue(email: impl Into<String>, queue: impl Into<String>) -> Self {
        MailboxSpec {
            owner: Some(Owner::Queue(queue.into())),
            ..MailboxSpec::user(email)
        }
    }

    /// A forward mailbox: incoming only (outgoing must be None).
    pub fn forward(email: impl Into<String>) -> Self {
        MailboxSpec {
            incoming_delivery: IncomingDelivery::ForwardMailbox,
            outgoing_delivery: OutgoingDelivery::None,
            owner: Some(Owner::Queue("forward".into())),
            ..MailboxSpec::user(email)
        }
    }

    /// Use this profile instead of the default.
    pub fn on_profile(mut self, profile_id: ProfileId) -> Self {
        self.profile_id = Some(profile_id);
        self
    }

    /// Allow spill-over to another profile with the same OAuth client.
    pub fn allow_spill_over(mut self) -> Self {
        self.allow_spill_over = true;
        self
    }
}

impl Mailbox {
    /// Builds a new mailbox from a spec, validating it (profile assignment is
    /// the directory's job).
    pub fn from_spec(spec: MailboxSpec, profile_id: Option<ProfileId>) -> Result<Mailbox> {
        let email = validate::email("email", &spec.email)?;
        let mailbox = Mailbox {
            id: MailboxId::new(),
            name: spec.name.unwrap_or_else(|| email.clone()),
            owner: spec.owner.unwrap_or_else(|| Owner::User(email.clone())),
            email,
            profile_id,
            incoming_delivery: spec.incoming_delivery,
            outgoing_delivery: spec.outgoing_delivery,
            delete_after_processing: spec.delete_after_processing,
            approval: spec.approval,
            incoming_test: TestStatus::NotRun,
            outgoing_test: TestStatus::NotRun,
            incoming_enabled: spec.incoming_delivery != IncomingDelivery::None,
            outgoing_enabled: spec.outgoing_delivery != OutgoingDelivery::None,
            connection: ConnectionState::NotConnected,
            alerts: Vec::new(),
            credentials: spec.credentials,
            created_at: OffsetDateTime::now_utc(),
        };
        mailbox.validate()?;
        Ok(mailbox)
    }

    /// Whether this is a forward mailbox.
    pub fn is_forward(&self) -> bool {
        self.incoming_delivery == IncomingDelivery::ForwardMailbox
    }

    /// Checks the Dynamics rules; the error names the field.
    pub fn validate(&self) -> Result<()> {
        validate::email("email", &self.email)?;
        if self.name.trim().is_empty() {
            return Err(Error::validation("name", "is required"));
        }
        if self.name.chars().count() > 200 {
            return Err(Error::validation("name", "must be at most 200 characters"));
        }
        match &self.owner {
            Owner::User(n) | Owner::Queue(n) if n.trim().is_empty() => {
                return Err(Error::validation("owner", "needs a name"));
            }
            _ => {}
        }
        if self.is_forward() && self.outgoing_delivery != OutgoingDelivery::None {
            return Err(Error::validation(
                "outgoing_delivery",
                "a forward mailbox allows only None for outgoing email",
            ));
        }
        if self.delete_after_processing
            && !(self.is_forward() || matches!(self.owner, Owner::Queue(_)))
        {
            return Err(Error::validation(
                "delete_after_processing",
                "is allowed only on forward and queue mailboxes",
            ));
        }
        if let Some(creds) = &self.credentials
            && creds.username.trim().is_empty()
        {
            return Err(Error::validation("credentials.username", "is required"));
        }
        Ok(())
    }

    /// Adds an alert, keeping at most [`MAX_ALERTS`].
    pub fn push_alert(
        &mut self,
        level: AlertLevel,
        code: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.alerts.push(Alert {
            level,
            code: code.into(),
            message: message.into(),
            at: OffsetDateTime::now_utc(),
        });
        if self.alerts.len() > MAX_ALERTS {
            let excess = self.alerts.len() - MAX_ALERTS;
            self.alerts.drain(..excess);
        }
    }
}
