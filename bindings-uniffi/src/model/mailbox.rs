//! `Mailbox`, `MailboxSpec` and their parts.

use std::sync::Arc;
use std::time::SystemTime;

use mailsync::model as core;

use super::app::json_error;
use crate::convert::{mirror_enum, profile_id as parse_profile_id, to_system_time};
use crate::error::{Result, guard, guard_ok};

mirror_enum! {
    /// How incoming mail reaches the CRM.
    IncomingDelivery => core::IncomingDelivery {
        /// Not processed.
        None,
        /// Server-side synchronization (this library).
        ServerSideSync,
        /// The legacy Email Router.
        EmailRouter,
        /// A forward mailbox.
        ForwardMailbox,
    }
}

mirror_enum! {
    /// How outgoing mail leaves the CRM.
    OutgoingDelivery => core::OutgoingDelivery {
        /// Not sent.
        None,
        /// Server-side synchronization (this library).
        ServerSideSync,
        /// The legacy Email Router.
        EmailRouter,
    }
}

mirror_enum! {
    /// Email address approval.
    ApprovalStatus => core::ApprovalStatus {
        /// Not set.
        Empty,
        /// Approved by an admin.
        Approved,
        /// Waiting for an admin.
        PendingApproval,
        /// Rejected by an admin.
        Rejected,
    }
}

mirror_enum! {
    /// How serious an alert is.
    AlertLevel => core::AlertLevel {
        /// Information.
        Info,
        /// Something to look at; work continues.
        Warning,
        /// Work stopped until someone acts.
        Error,
    }
}

/// Who the mailbox belongs to.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Owner {
    /// A CRM user.
    User {
        /// The CRM's user name or id.
        name: String,
    },
    /// A CRM queue.
    Queue {
        /// The queue's name.
        name: String,
    },
}

impl From<core::Owner> for Owner {
    fn from(o: core::Owner) -> Self {
        match o {
            core::Owner::User(name) => Owner::User { name },
            core::Owner::Queue(name) => Owner::Queue { name },
        }
    }
}

impl From<Owner> for core::Owner {
    fn from(o: Owner) -> Self {
        match o {
            Owner::User { name } => core::Owner::User(name),
            Owner::Queue { name } => core::Owner::Queue(name),
        }
    }
}

/// Result of the last test of one direction.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum TestStatus {
    /// Never tested.
    NotRun,
    /// Passed.
    Success {
        /// When.
        at: SystemTime,
    },
    /// Failed.
    Failure {
        /// When.
        at: SystemTime,
        /// Stable error code of the failure.
        code: String,
        /// What went wrong.
        reason: String,
    },
}

impl From<core::TestStatus> for TestStatus {
    fn from(t: core::TestStatus) -> Self {
        match t {
            core::TestStatus::NotRun => TestStatus::NotRun,
            core::TestStatus::Success { at } => TestStatus::Success {
                at: to_system_time(at),
            },
            core::TestStatus::Failure { at, code, reason } => TestStatus::Failure {
                at: to_system_time(at),
                code,
                reason,
            },
        }
    }
}

/// Whether the mailbox holds working OAuth tokens.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Never connected, or disconnected.
    NotConnected,
    /// A consent URL was issued; waiting for the redirect.
    AwaitingConsent {
        /// When the pending consent expires.
        expires_at: SystemTime,
    },
    /// Tokens are stored and valid as far as we know.
    Connected {
        /// The Google account that consented.
        account: String,
        /// When.
        since: SystemTime,
    },
    /// The grant stopped working; the owner must consent again.
    NeedsReconsent {
        /// Stable code of the cause (e.g. `token_revoked`).
        code: String,
        /// Explanation, for people.
        reason: String,
    },
}

impl From<core::ConnectionState> for ConnectionState {
    fn from(c: core::ConnectionState) -> Self {
        match c {
            core::ConnectionState::NotConnected => ConnectionState::NotConnected,
            core::ConnectionState::AwaitingConsent { expires_at } => {
                ConnectionState::AwaitingConsent {
                    expires_at: to_system_time(expires_at),
                }
            }
            core::ConnectionState::Connected { account, since } => ConnectionState::Connected {
                account,
                since: to_system_time(since),
            },
            core::ConnectionState::NeedsReconsent { code, reason } => {
                ConnectionState::NeedsReconsent { code, reason }
            }
        }
    }
}

/// An entry on the mailbox's alerts wall.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Alert {
    /// Level.
    pub level: AlertLevel,
    /// Stable code.
    pub code: String,
    /// Text for people.
    pub message: String,
    /// When.
    pub at: SystemTime,
}

impl From<core::Alert> for Alert {
    fn from(a: core::Alert) -> Self {
        Alert {
            level: a.level.into(),
            code: a.code,
            message: a.message,
            at: to_system_time(a.at),
        }
    }
}

/// Per-mailbox credentials as the host may see them: the user name and
/// whether a password is set (the password itself is never exposed).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MailboxCredentials {
    /// User name.
    pub username: String,
    /// Whether a password is stored.
    pub has_password: bool,
}

fn credentials_view(c: &Option<core::MailboxCredentials>) -> Option<MailboxCredentials> {
    c.as_ref().map(|c| MailboxCredentials {
        username: c.username.clone(),
        has_password: c.password.as_ref().is_some_and(|p| !p.is_empty()),
    })
}

fn credentials(username: String, password: Option<String>) -> core::MailboxCredentials {
    core::MailboxCredentials {
        username,
        password: password.map(core::Secret::new),
    }
}

/// A mailbox record. Immutable: `with…` methods return a new mailbox; pass
/// it to `MailSync.updateMailbox`. Connection state, tests and alerts are
/// maintained by the library and read-only here.
#[derive(uniffi::Object)]
#[uniffi::export(Debug)]
pub struct Mailbox {
    pub(crate) inner: core::Mailbox,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Mailbox {
    pub(crate) fn wrap(inner: core::Mailbox) -> Arc<Mailbox> {
        Arc::new(Mailbox { inner })
    }

    fn map(&self, f: impl FnOnce(&mut core::Mailbox)) -> Result<Arc<Mailbox>> {
        let mut mailbox = self.inner.clone();
        guard_ok(|| {
            f(&mut mailbox);
            Mailbox::wrap(mailbox)
        })
    }
}

#[uniffi::export]
impl Mailbox {
    /// Stable id (a UUID).
    pub fn id(&self) -> String {
        self.inner.id.to_string()
    }

    /// Display name.
    pub fn name(&self) -> String {
        self.inner.name.clone()
    }

    /// Email address, lower-cased.
    pub fn email(&self) -> String {
        self.inner.email.clone()
    }

    /// User or queue.
    pub fn owner(&self) -> Owner {
        self.inner.owner.clone().into()
    }

    /// Server profile id, if one is assigned.
    pub fn profile_id(&self) -> Option<String> {
        self.inner.profile_id.as_ref().map(ToString::to_string)
    }

    /// Incoming delivery method.
    pub fn incoming_delivery(&self) -> IncomingDelivery {
        self.inner.incoming_delivery.into()
    }

    /// Outgoing delivery method.
    pub fn outgoing_delivery(&self) -> OutgoingDelivery {
        self.inner.outgoing_delivery.into()
    }

    /// Delete mail from the server after processing.
    pub fn delete_after_processing(&self) -> bool {
        self.inner.delete_after_processing
    }

    /// Approval of the address.
    pub fn approval(&self) -> ApprovalStatus {
        self.inner.approval.into()
    }

    /// Last incoming test.
    pub fn incoming_test(&self) -> TestStatus {
        self.inner.incoming_test.clone().into()
    }

    /// Last outgoing test.
    pub fn outgoing_test(&self) -> TestStatus {
        self.inner.outgoing_test.clone().into()
    }

    /// Incoming sync enabled.
    pub fn incoming_enabled(&self) -> bool {
        self.inner.incoming_enabled
    }

    /// Outgoing sync enabled.
    pub fn outgoing_enabled(&self) -> bool {
        self.inner.outgoing_enabled
    }

    /// OAuth connection state.
    pub fn connection(&self) -> ConnectionState {
        self.inner.connection.clone().into()
    }

    /// Alerts, newest last.
    pub fn alerts(&self) -> Vec<Alert> {
        self.inner.alerts.iter().cloned().map(Alert::from).collect()
    }

    /// Per-mailbox credentials (user name and whether a password is set).
    pub fn credentials(&self) -> Option<MailboxCredentials> {
        credentials_view(&self.inner.credentials)
    }

    /// When the mailbox was created.
    pub fn created_at(&self) -> SystemTime {
        to_system_time(self.inner.created_at)
    }

    /// Whether this is a forward mailbox.
    pub fn is_forward(&self) -> bool {
        self.inner.is_forward()
    }

    /// Checks the mailbox rules; a `validation` error names the field.
    pub fn validate(&self) -> Result<()> {
        guard(|| self.inner.validate())
    }

    /// Another display name.
    pub fn with_name(&self, name: String) -> Result<Arc<Mailbox>> {
        self.map(|m| m.name = name)
    }

    /// Another owner.
    pub fn with_owner(&self, owner: Owner) -> Result<Arc<Mailbox>> {
        self.map(|m| m.owner = owner.into())
    }

    /// Another incoming delivery method.
    pub fn with_incoming_delivery(&self, delivery: IncomingDelivery) -> Result<Arc<Mailbox>> {
        self.map(|m| m.incoming_delivery = delivery.into())
    }

    /// Another outgoing delivery method.
    pub fn with_outgoing_delivery(&self, delivery: OutgoingDelivery) -> Result<Arc<Mailbox>> {
        self.map(|m| m.outgoing_delivery = delivery.into())
    }

    /// Delete mail from the server after processing (forward and queue mailboxes).
    pub fn with_delete_after_processing(&self, value: bool) -> Result<Arc<Mailbox>> {
        self.map(|m| m.delete_after_processing = value)
    }

    /// Another approval status.
    pub fn with_approval(&self, approval: ApprovalStatus) -> Result<Arc<Mailbox>> {
        self.map(|m| m.approval = approval.into())
    }

    /// Enable or disable incoming sync.
    pub fn with_incoming_enabled(&self, value: bool) -> Result<Arc<Mailbox>> {
        self.map(|m| m.incoming_enabled = value)
    }

    /// Enable or disable outgoing sync.
    pub fn with_outgoing_enabled(&self, value: bool) -> Result<Arc<Mailbox>> {
        self.map(|m| m.outgoing_enabled = value)
    }

    /// Set per-mailbox credentials (the password is sealed at rest).
    pub fn with_credentials(
        &self,
        username: String,
        password: Option<String>,
    ) -> Result<Arc<Mailbox>> {
        self.map(|m| m.credentials = Some(credentials(username, password)))
    }

    /// Remove per-mailbox credentials.
    pub fn without_credentials(&self) -> Result<Arc<Mailbox>> {
        self.map(|m| m.credentials = None)
    }

    /// The core's JSON form (never contains secrets).
    pub fn to_json(&self) -> Result<String> {
        guard(|| serde_json::to_string(&self.inner).map_err(json_error))
    }
}

/// What a caller supplies to create a mailbox; the rest is defaulted.
/// Immutable: builder methods return a new spec.
#[derive(uniffi::Object)]
#[uniffi::export(Debug)]
pub struct MailboxSpec {
    pub(crate) inner: core::MailboxSpec,
}

impl std::fmt::Debug for MailboxSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl MailboxSpec {
    fn wrap(inner: core::MailboxSpec) -> Arc<MailboxSpec> {
        Arc::new(MailboxSpec { inner })
    }

    fn map(
        &self,
        f: impl FnOnce(core::MailboxSpec) -> mailsync::Result<core::MailboxSpec>,
    ) -> Result<Arc<MailboxSpec>> {
        let spec = self.inner.clone();
        guard(|| f(spec).map(MailboxSpec::wrap))
    }
}

#[uniffi::export]
impl MailboxSpec {
    /// A user's mailbox with server-side sync in both directions.
    #[uniffi::constructor]
    pub fn user(email: String) -> Result<Arc<MailboxSpec>> {
        guard_ok(|| MailboxSpec::wrap(core::MailboxSpec::user(email)))
    }

    /// A queue's mailbox.
    #[uniffi::constructor]
    pub fn queue(email: String, queue: String) -> Result<Arc<MailboxSpec>> {
        guard_ok(|| MailboxSpec::wrap(core::MailboxSpec::queue(email, queue)))
    }

    /// A forward mailbox: incoming only.
    #[uniffi::constructor]
    pub fn forward(email: String) -> Result<Arc<MailboxSpec>> {
        guard_ok(|| MailboxSpec::wrap(core::MailboxSpec::forward(email)))
    }

    /// Use this profile (by id) instead of the default.
    pub fn on_profile(&self, profile_id: String) -> Result<Arc<MailboxSpec>> {
        self.map(|s| Ok(s.on_profile(parse_profile_id(&profile_id)?)))
    }

    /// Allow spill-over to another profile with the same OAuth client.
    pub fn allow_spill_over(&self) -> Result<Arc<MailboxSpec>> {
        self.map(|s| Ok(s.allow_spill_over()))
    }

    /// Display name (defaults to the address).
    pub fn with_name(&self, name: String) -> Result<Arc<MailboxSpec>> {
        self.map(|mut s| {
            s.name = Some(name);
            Ok(s)
        })
    }

    /// Owner (defaults to the user named by the address).
    pub fn with_owner(&self, owner: Owner) -> Result<Arc<MailboxSpec>> {
        self.map(|mut s| {
            s.owner = Some(owner.into());
            Ok(s)
        })
    }

    /// Incoming delivery method.
    pub fn with_incoming_delivery(&self, delivery: IncomingDelivery) -> Result<Arc<MailboxSpec>> {
        self.map(|mut s| {
            s.incoming_delivery = delivery.into();
            Ok(s)
        })
    }

    /// Outgoing delivery method.
    pub fn with_outgoing_delivery(&self, delivery: OutgoingDelivery) -> Result<Arc<MailboxSpec>> {
        self.map(|mut s| {
            s.outgoing_delivery = delivery.into();
            Ok(s)
        })
    }

    /// Delete mail from the server after processing.
    pub fn with_delete_after_processing(&self, value: bool) -> Result<Arc<MailboxSpec>> {
        self.map(|mut s| {
            s.delete_after_processing = value;
            Ok(s)
        })
    }

    /// Approval status.
    pub fn with_approval(&self, approval: ApprovalStatus) -> Result<Arc<MailboxSpec>> {
        self.map(|mut s| {
            s.approval = approval.into();
            Ok(s)
        })
    }

    /// Per-mailbox credentials (the password is sealed at rest).
    pub fn with_credentials(
        &self,
        username: String,
        password: Option<String>,
    ) -> Result<Arc<MailboxSpec>> {
        self.map(|mut s| {
            s.credentials = Some(credentials(username, password));
            Ok(s)
        })
    }

    /// Email address.
    pub fn email(&self) -> String {
        self.inner.email.clone()
    }

    /// Display name, if set.
    pub fn name(&self) -> Option<String> {
        self.inner.name.clone()
    }

    /// Owner, if set.
    pub fn owner(&self) -> Option<Owner> {
        self.inner.owner.clone().map(Owner::from)
    }

    /// Profile id, if set.
    pub fn profile_id(&self) -> Option<String> {
        self.inner.profile_id.as_ref().map(ToString::to_string)
    }

    /// Incoming delivery method.
    pub fn incoming_delivery(&self) -> IncomingDelivery {
        self.inner.incoming_delivery.into()
    }

    /// Outgoing delivery method.
    pub fn outgoing_delivery(&self) -> OutgoingDelivery {
        self.inner.outgoing_delivery.into()
    }

    /// Delete mail from the server after processing.
    pub fn delete_after_processing(&self) -> bool {
        self.inner.delete_after_processing
    }

    /// Approval status.
    pub fn approval(&self) -> ApprovalStatus {
        self.inner.approval.into()
    }

    /// Per-mailbox credentials (user name and whether a password is set).
    pub fn credentials(&self) -> Option<MailboxCredentials> {
        credentials_view(&self.inner.credentials)
    }

    /// Whether spill-over is allowed.
    pub fn spill_over_allowed(&self) -> bool {
        self.inner.allow_spill_over
    }
}
