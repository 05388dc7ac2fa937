//! Mailbox: one user's or queue's address synchronized through a profile.
//!
//! Mirrors the configuration of the Dynamics 365 `mailbox` record: delivery
//! methods with their rules, approval, "process email from" and
//! credentials. What changes at run time (the grant, each direction's
//! status, alerts) is not here but in [`crate::lifecycle::MailboxState`],
//! so an admin's edit and a sync worker's progress never overwrite each
//! other.

use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::validate;
use super::{MailboxId, ProfileId, Timestamp};
use crate::error::{Error, Result};

/// Who the mailbox belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(
    feature = "napi",
    napi_derive::napi(discriminant = "kind", discriminant_case = "snake_case")
)]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass_complex_enum,
    pyo3::pyclass(module = "mailsync", eq, from_py_object)
)]
pub enum Owner {
    /// A CRM user.
    User {
        /// The CRM's user name or id.
        name: String,
    },
    /// A CRM queue.
    Queue {
        /// The queue's name or id.
        name: String,
    },
}

/// How incoming mail reaches the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
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

/// Which incoming mail the CRM takes in (Dynamics' per-user "Track
/// incoming email" option). Except for `All`, the engine decides from the
/// headers, before downloading a message's body, asking the host's sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
pub enum IncomingFilter {
    /// Every message.
    All,
    /// Only replies to email the CRM tracks (In-Reply-To or References
    /// names a tracked Message-ID); Dynamics' default.
    #[default]
    RepliesToTrackedEmail,
    /// Only mail from senders the CRM knows (leads, contacts, accounts,
    /// email-enabled records).
    FromKnownRecords,
    /// Nothing (every message is counted as filtered).
    None,
}

/// How outgoing mail leaves the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
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
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
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

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
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
pub struct Alert {
    /// Level.
    pub level: AlertLevel,
    /// Stable code (an error code, or an event such as `mailbox_enabled`).
    pub code: String,
    /// Text for people.
    pub message: String,
    /// When.
    pub at: Timestamp,
}

/// The most alerts kept per mailbox; older ones are dropped first.
pub const MAX_ALERTS: usize = 50;

/// User name and password for "credentials per mailbox" profiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
pub struct MailboxCredentials {
    /// User name.
    pub username: String,
    /// Password: sealed at rest, never serialized.
    #[serde(skip)]
    pub password: Option<Secret>,
}

/// A mailbox's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Which incoming mail is taken in.
    #[serde(default)]
    pub incoming_filter: IncomingFilter,
    /// Outgoing delivery method.
    pub outgoing_delivery: OutgoingDelivery,
    /// Delete mail from the server after processing (forward and queue mailboxes only).
    pub delete_after_processing: bool,
    /// Approval of the address.
    pub approval: ApprovalStatus,
    /// Only mail received after this instant is taken in (the greater of
    /// this and the profile's value applies).
    #[serde(default)]
    pub process_email_received_after: Option<Timestamp>,
    /// Per-mailbox credentials (password profiles only).
    pub credentials: Option<MailboxCredentials>,
    /// Created at.
    pub created_at: Timestamp,
    /// Write version for optimistic concurrency: an update must carry the
    /// version it was read at (set by the store; only grows).
    #[serde(default)]
    pub version: i64,
}

/// What a caller supplies to create a mailbox; the rest is defaulted.
#[derive(Debug, Clone, PartialEq)]
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
    /// Default: replies to tracked email (as in Dynamics).
    pub incoming_filter: IncomingFilter,
    /// Default: server-side sync.
    pub outgoing_delivery: OutgoingDelivery,
    /// Default: false.
    pub delete_after_processing: bool,
    /// Default: approved (set to pending where approval is required).
    pub approval: ApprovalStatus,
    /// Per-mailbox credentials.
    pub credentials: Option<MailboxCredentials>,
    /// Only mail received after this instant is taken in.
    pub process_email_received_after: Option<Timestamp>,
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
            incoming_filter: IncomingFilter::default(),
            outgoing_delivery: OutgoingDelivery::ServerSideSync,
            delete_after_processing: false,
            approval: ApprovalStatus::Approved,
            credentials: None,
            process_email_received_after: None,
            allow_spill_over: false,
        }
    }

    /// A queue's mailbox.
    pub fn queue(email: impl Into<String>, queue: impl Into<String>) -> Self {
        MailboxSpec {
            owner: Some(Owner::Queue { name: queue.into() }),
            ..MailboxSpec::user(email)
        }
    }

    /// A forward mailbox: incoming only (outgoing must be None).
    pub fn forward(email: impl Into<String>) -> Self {
        MailboxSpec {
            incoming_delivery: IncomingDelivery::ForwardMailbox,
            outgoing_delivery: OutgoingDelivery::None,
            owner: Some(Owner::Queue {
                name: "forward".into(),
            }),
            ..MailboxSpec::user(email)
        }
    }

    /// Use this profile instead of the default.
    pub fn on_profile(mut self, profile_id: ProfileId) -> Self {
        self.profile_id = Some(profile_id);
        self
    }

    /// Take in this mail (default: replies to tracked email).
    pub fn with_incoming_filter(mut self, filter: IncomingFilter) -> Self {
        self.incoming_filter = filter;
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
    pub fn from_spec(
        spec: MailboxSpec,
        profile_id: Option<ProfileId>,
        created_at: Timestamp,
    ) -> Result<Mailbox> {
        let email = validate::email("email", &spec.email)?;
        let mailbox = Mailbox {
            id: MailboxId::new(),
            name: spec.name.unwrap_or_else(|| email.clone()),
            owner: spec.owner.unwrap_or_else(|| Owner::User {
                name: email.clone(),
            }),
            email,
            profile_id,
            incoming_delivery: spec.incoming_delivery,
            incoming_filter: spec.incoming_filter,
            outgoing_delivery: spec.outgoing_delivery,
            delete_after_processing: spec.delete_after_processing,
            approval: spec.approval,
            process_email_received_after: spec.process_email_received_after,
            credentials: spec.credentials,
            created_at,
            version: 0,
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
            Owner::User { name: n } | Owner::Queue { name: n } if n.trim().is_empty() => {
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
            && !(self.is_forward() || matches!(self.owner, Owner::Queue { name: _ }))
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
}
