//! `Mailbox`, `MailboxSpec` and their plain-object parts.

use mailsync::model;
use napi::Env;
use napi_derive::napi;

use crate::enums::{AlertLevel, ApprovalStatus, IncomingDelivery, OutgoingDelivery};
use crate::error::guard;
use crate::{parse_profile_id, rfc3339};

/// Who a mailbox belongs to: `{ kind: 'user' | 'queue', name }`.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct Owner {
    /// `user` or `queue`.
    #[napi(ts_type = "'user' | 'queue'")]
    pub kind: String,
    /// The CRM user or queue name.
    pub name: String,
}

impl From<&model::Owner> for Owner {
    fn from(o: &model::Owner) -> Self {
        let (kind, name) = match o {
            model::Owner::User(n) => ("user", n),
            model::Owner::Queue(n) => ("queue", n),
        };
        Owner {
            kind: kind.to_owned(),
            name: name.clone(),
        }
    }
}

impl Owner {
    fn to_core(&self) -> mailsync::Result<model::Owner> {
        match self.kind.as_str() {
            "user" => Ok(model::Owner::User(self.name.clone())),
            "queue" => Ok(model::Owner::Queue(self.name.clone())),
            _ => Err(mailsync::Error::validation(
                "owner.kind",
                "must be 'user' or 'queue'",
            )),
        }
    }
}

/// Result of the last test of one direction (the core's `TestStatus`).
#[napi(object)]
#[derive(Debug, Clone)]
pub struct TestStatus {
    /// `not_run`, `success` or `failure`.
    #[napi(ts_type = "'not_run' | 'success' | 'failure'")]
    pub status: String,
    /// When (RFC 3339), unless `not_run`.
    pub at: Option<String>,
    /// Stable error code of a failure.
    pub code: Option<String>,
    /// What went wrong.
    pub reason: Option<String>,
}

impl From<&model::TestStatus> for TestStatus {
    fn from(t: &model::TestStatus) -> Self {
        match t {
            model::TestStatus::NotRun => TestStatus {
                status: "not_run".into(),
                at: None,
                code: None,
                reason: None,
            },
            model::TestStatus::Success { at } => TestStatus {
                status: "success".into(),
                at: Some(rfc3339(*at)),
                code: None,
                reason: None,
            },
            model::TestStatus::Failure { at, code, reason } => TestStatus {
                status: "failure".into(),
                at: Some(rfc3339(*at)),
                code: Some(code.clone()),
                reason: Some(reason.clone()),
            },
        }
    }
}

/// Whether the mailbox holds working OAuth tokens (the core's `ConnectionState`).
#[napi(object)]
#[derive(Debug, Clone)]
pub struct ConnectionState {
    /// `not_connected`, `awaiting_consent`, `connected` or `needs_reconsent`.
    #[napi(ts_type = "'not_connected' | 'awaiting_consent' | 'connected' | 'needs_reconsent'")]
    pub state: String,
    /// When a pending consent expires (`awaiting_consent`).
    pub expires_at: Option<String>,
    /// The Google account that consented (`connected`).
    pub account: Option<String>,
    /// Connected since (`connected`).
    pub since: Option<String>,
    /// Stable code of the cause (`needs_reconsent`).
    pub code: Option<String>,
    /// Explanation (`needs_reconsent`).
    pub reason: Option<String>,
}

impl From<&model::ConnectionState> for ConnectionState {
    fn from(c: &model::ConnectionState) -> Self {
        let mut out = ConnectionState {
            state: String::new(),
            expires_at: None,
            account: None,
            since: None,
            code: None,
            reason: None,
        };
        match c {
            model::ConnectionState::NotConnected => out.state = "not_connected".into(),
            model::ConnectionState::AwaitingConsent { expires_at } => {
                out.state = "awaiting_consent".into();
                out.expires_at = Some(rfc3339(*expires_at));
            }
            model::ConnectionState::Connected { account, since } => {
                out.state = "connected".into();
                out.account = Some(account.clone());
                out.since = Some(rfc3339(*since));
            }
            model::ConnectionState::NeedsReconsent { code, reason } => {
                out.state = "needs_reconsent".into();
                out.code = Some(code.clone());
                out.reason = Some(reason.clone());
            }
        }
        out
    }
}

/// An entry on the mailbox's alerts wall.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct Alert {
    /// Level.
    pub level: AlertLevel,
    /// Stable code.
    pub code: String,
    /// Text for people.
    pub message: String,
    /// When (RFC 3339).
    pub at: String,
}

/// Per-mailbox user name; the password is write-only.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct MailboxCredentials {
    /// User name.
    pub username: String,
    /// Whether a password is set.
    pub has_password: bool,
}

fn credentials(c: &Option<model::MailboxCredentials>) -> Option<MailboxCredentials> {
    c.as_ref().map(|c| MailboxCredentials {
        username: c.username.clone(),
        has_password: c.password.as_ref().is_some_and(|p| !p.is_empty()),
    })
}

/// What a caller supplies to create a mailbox. Builder methods return a new
/// spec; properties can also be set directly.
#[napi]
#[derive(Clone)]
pub struct MailboxSpec {
    pub(crate) inner: model::MailboxSpec,
}

impl MailboxSpec {
    fn with(&self, change: impl FnOnce(model::MailboxSpec) -> model::MailboxSpec) -> MailboxSpec {
        MailboxSpec {
            inner: change(self.inner.clone()),
        }
    }
}

#[napi]
impl MailboxSpec {
    /// A user's mailbox with server-side sync in both directions.
    #[napi]
    pub fn user(env: &Env, email: String) -> napi::Result<MailboxSpec> {
        guard(env, || {
            Ok(MailboxSpec {
                inner: model::MailboxSpec::user(email),
            })
        })
    }

    /// A queue's mailbox.
    #[napi]
    pub fn queue(env: &Env, email: String, queue: String) -> napi::Result<MailboxSpec> {
        guard(env, || {
            Ok(MailboxSpec {
                inner: model::MailboxSpec::queue(email, queue),
            })
        })
    }

    /// A forward mailbox: incoming only.
    #[napi]
    pub fn forward(env: &Env, email: String) -> napi::Result<MailboxSpec> {
        guard(env, || {
            Ok(MailboxSpec {
                inner: model::MailboxSpec::forward(email),
            })
        })
    }

    /// Use this profile (by id) instead of the default; throws `validation` for a malformed id.
    #[napi]
    pub fn on_profile(&self, env: &Env, profile_id: String) -> napi::Result<MailboxSpec> {
        guard(env, || {
            let id = parse_profile_id(&profile_id)?;
            Ok(self.with(|s| s.on_profile(id)))
        })
    }

    /// Core `allow_spill_over()`: a copy that may spill over to another profile
    /// with the same OAuth client (renamed because `allowSpillOver` is the property).
    #[napi]
    pub fn with_spill_over(&self, env: &Env) -> napi::Result<MailboxSpec> {
        guard(env, || Ok(self.with(model::MailboxSpec::allow_spill_over)))
    }

    /// A copy with per-mailbox credentials (password sealed at rest, never readable).
    #[napi]
    pub fn with_credentials(
        &self,
        env: &Env,
        username: String,
        password: String,
    ) -> napi::Result<MailboxSpec> {
        guard(env, || {
            Ok(self.with(|mut s| {
                s.credentials = Some(model::MailboxCredentials {
                    username,
                    password: Some(password.into()),
                });
                s
            }))
        })
    }

    /// Email address.
    #[napi(getter)]
    pub fn email(&self) -> String {
        self.inner.email.clone()
    }

    #[napi(setter, js_name = "email")]
    pub fn set_email(&mut self, value: String) {
        self.inner.email = value;
    }

    /// Display name; `null` means the address.
    #[napi(getter)]
    pub fn name(&self) -> Option<String> {
        self.inner.name.clone()
    }

    #[napi(setter, js_name = "name")]
    pub fn set_name(&mut self, value: Option<String>) {
        self.inner.name = value;
    }

    /// Owner; `null` means the user named by the address.
    #[napi(getter)]
    pub fn owner(&self) -> Option<Owner> {
        self.inner.owner.as_ref().map(Owner::from)
    }

    #[napi(setter, js_name = "owner")]
    pub fn set_owner(&mut self, env: &Env, value: Option<Owner>) -> napi::Result<()> {
        let owner = guard(env, || value.map(|o| o.to_core()).transpose())?;
        self.inner.owner = owner;
        Ok(())
    }

    /// Profile id; `null` means the default profile.
    #[napi(getter)]
    pub fn profile_id(&self) -> Option<String> {
        self.inner.profile_id.as_ref().map(ToString::to_string)
    }

    /// Incoming delivery method.
    #[napi(getter)]
    pub fn incoming_delivery(&self) -> IncomingDelivery {
        self.inner.incoming_delivery.into()
    }

    #[napi(setter, js_name = "incomingDelivery")]
    pub fn set_incoming_delivery(&mut self, value: IncomingDelivery) {
        self.inner.incoming_delivery = value.into();
    }

    /// Outgoing delivery method.
    #[napi(getter)]
    pub fn outgoing_delivery(&self) -> OutgoingDelivery {
        self.inner.outgoing_delivery.into()
    }

    #[napi(setter, js_name = "outgoingDelivery")]
    pub fn set_outgoing_delivery(&mut self, value: OutgoingDelivery) {
        self.inner.outgoing_delivery = value.into();
    }

    /// Delete mail from the server after processing (forward and queue mailboxes only).
    #[napi(getter)]
    pub fn delete_after_processing(&self) -> bool {
        self.inner.delete_after_processing
    }

    #[napi(setter, js_name = "deleteAfterProcessing")]
    pub fn set_delete_after_processing(&mut self, value: bool) {
        self.inner.delete_after_processing = value;
    }

    /// Approval of the address.
    #[napi(getter)]
    pub fn approval(&self) -> ApprovalStatus {
        self.inner.approval.into()
    }

    #[napi(setter, js_name = "approval")]
    pub fn set_approval(&mut self, value: ApprovalStatus) {
        self.inner.approval = value.into();
    }

    /// Per-mailbox credentials (user name only; see `withCredentials`).
    #[napi(getter)]
    pub fn credentials(&self) -> Option<MailboxCredentials> {
        credentials(&self.inner.credentials)
    }

    /// Whether the mailbox may spill over to a sibling profile when its profile is full.
    #[napi(getter)]
    pub fn allow_spill_over(&self) -> bool {
        self.inner.allow_spill_over
    }

    #[napi(setter, js_name = "allowSpillOver")]
    pub fn set_allow_spill_over(&mut self, value: bool) {
        self.inner.allow_spill_over = value;
    }

    /// A plain object of the spec's fields (camelCase, no secret).
    #[napi(js_name = "toJSON", ts_return_type = "Record<string, unknown>")]
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.inner;
        serde_json::json!({
            "email": s.email,
            "name": s.name,
            "owner": s.owner,
            "profileId": s.profile_id,
            "incomingDelivery": s.incoming_delivery,
            "outgoingDelivery": s.outgoing_delivery,
            "deleteAfterProcessing": s.delete_after_processing,
            "approval": s.approval,
            "credentials": s.credentials,
            "allowSpillOver": s.allow_spill_over,
        })
    }

    /// `MailboxSpec(<email>)`.
    #[napi(js_name = "toString")]
    pub fn to_display(&self) -> String {
        format!("MailboxSpec({})", self.inner.email)
    }
}

/// A mailbox record. Setters change this object; `MailSync.updateMailbox` stores it.
#[napi]
#[derive(Clone)]
pub struct Mailbox {
    pub(crate) inner: model::Mailbox,
}

impl Mailbox {
    pub(crate) fn wrap(inner: model::Mailbox) -> Self {
        Mailbox { inner }
    }
}

#[napi]
impl Mailbox {
    /// Checks the mailbox rules; throws `validation` naming the field.
    #[napi]
    pub fn validate(&self, env: &Env) -> napi::Result<()> {
        guard(env, || self.inner.validate())
    }

    /// Whether this is a forward mailbox.
    #[napi(getter)]
    pub fn is_forward(&self) -> bool {
        self.inner.is_forward()
    }

    /// Stable id (a UUID).
    #[napi(getter)]
    pub fn id(&self) -> String {
        self.inner.id.to_string()
    }

    /// Display name.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.inner.name.clone()
    }

    #[napi(setter, js_name = "name")]
    pub fn set_name(&mut self, value: String) {
        self.inner.name = value;
    }

    /// Email address (lower-cased).
    #[napi(getter)]
    pub fn email(&self) -> String {
        self.inner.email.clone()
    }

    /// User or queue.
    #[napi(getter)]
    pub fn owner(&self) -> Owner {
        Owner::from(&self.inner.owner)
    }

    /// Server profile id, or `null`.
    #[napi(getter)]
    pub fn profile_id(&self) -> Option<String> {
        self.inner.profile_id.as_ref().map(ToString::to_string)
    }

    /// Incoming delivery method.
    #[napi(getter)]
    pub fn incoming_delivery(&self) -> IncomingDelivery {
        self.inner.incoming_delivery.into()
    }

    #[napi(setter, js_name = "incomingDelivery")]
    pub fn set_incoming_delivery(&mut self, value: IncomingDelivery) {
        self.inner.incoming_delivery = value.into();
    }

    /// Outgoing delivery method.
    #[napi(getter)]
    pub fn outgoing_delivery(&self) -> OutgoingDelivery {
        self.inner.outgoing_delivery.into()
    }

    #[napi(setter, js_name = "outgoingDelivery")]
    pub fn set_outgoing_delivery(&mut self, value: OutgoingDelivery) {
        self.inner.outgoing_delivery = value.into();
    }

    /// Delete mail from the server after processing.
    #[napi(getter)]
    pub fn delete_after_processing(&self) -> bool {
        self.inner.delete_after_processing
    }

    #[napi(setter, js_name = "deleteAfterProcessing")]
    pub fn set_delete_after_processing(&mut self, value: bool) {
        self.inner.delete_after_processing = value;
    }

    /// Approval of the address.
    #[napi(getter)]
    pub fn approval(&self) -> ApprovalStatus {
        self.inner.approval.into()
    }

    #[napi(setter, js_name = "approval")]
    pub fn set_approval(&mut self, value: ApprovalStatus) {
        self.inner.approval = value.into();
    }

    /// Last incoming test.
    #[napi(getter)]
    pub fn incoming_test(&self) -> TestStatus {
        TestStatus::from(&self.inner.incoming_test)
    }

    /// Last outgoing test.
    #[napi(getter)]
    pub fn outgoing_test(&self) -> TestStatus {
        TestStatus::from(&self.inner.outgoing_test)
    }

    /// Incoming sync enabled.
    #[napi(getter)]
    pub fn incoming_enabled(&self) -> bool {
        self.inner.incoming_enabled
    }

    #[napi(setter, js_name = "incomingEnabled")]
    pub fn set_incoming_enabled(&mut self, value: bool) {
        self.inner.incoming_enabled = value;
    }

    /// Outgoing sync enabled.
    #[napi(getter)]
    pub fn outgoing_enabled(&self) -> bool {
        self.inner.outgoing_enabled
    }

    #[napi(setter, js_name = "outgoingEnabled")]
    pub fn set_outgoing_enabled(&mut self, value: bool) {
        self.inner.outgoing_enabled = value;
    }

    /// OAuth connection state.
    #[napi(getter)]
    pub fn connection(&self) -> ConnectionState {
        ConnectionState::from(&self.inner.connection)
    }

    /// Alerts, newest last.
    #[napi(getter)]
    pub fn alerts(&self) -> Vec<Alert> {
        self.inner
            .alerts
            .iter()
            .map(|a| Alert {
                level: a.level.into(),
                code: a.code.clone(),
                message: a.message.clone(),
                at: rfc3339(a.at),
            })
            .collect()
    }

    /// Per-mailbox credentials (user name only).
    #[napi(getter)]
    pub fn credentials(&self) -> Option<MailboxCredentials> {
        credentials(&self.inner.credentials)
    }

    /// Created at (RFC 3339).
    #[napi(getter)]
    pub fn created_at(&self) -> String {
        rfc3339(self.inner.created_at)
    }

    /// The core's JSON form (snake_case keys, no secret).
    #[napi(js_name = "toJSON", ts_return_type = "Record<string, unknown>")]
    pub fn to_json(&self, env: &Env) -> napi::Result<serde_json::Value> {
        guard(env, || crate::json(&self.inner))
    }

    /// `Mailbox(<email>, <id>)`.
    #[napi(js_name = "toString")]
    pub fn to_display(&self) -> String {
        format!("Mailbox({}, {})", self.inner.email, self.inner.id)
    }
}
