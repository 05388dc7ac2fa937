//! Mailboxes and their parts (core `model::mailbox`).

use mailsync::model;
use pyo3::prelude::*;

use crate::convert::{
    enum_str, parse_enum, profile_id, py_str_repr, to_datetime, to_dict, to_json,
};
use crate::errors::guard;

/// Who a mailbox belongs to: `kind` "user" or "queue", and a name.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct Owner {
    pub inner: model::Owner,
}

#[pymethods]
impl Owner {
    /// A CRM user (by the CRM's user name or id).
    #[staticmethod]
    fn user(name: &str) -> Owner {
        Owner {
            inner: model::Owner::User(name.to_owned()),
        }
    }

    /// A CRM queue.
    #[staticmethod]
    fn queue(name: &str) -> Owner {
        Owner {
            inner: model::Owner::Queue(name.to_owned()),
        }
    }

    /// "user" or "queue".
    #[getter]
    fn kind(&self) -> &'static str {
        match self.inner {
            model::Owner::User(_) => "user",
            model::Owner::Queue(_) => "queue",
        }
    }

    /// The user's or queue's name.
    #[getter]
    fn name(&self) -> String {
        match &self.inner {
            model::Owner::User(n) | model::Owner::Queue(n) => n.clone(),
        }
    }

    fn __repr__(&self) -> String {
        format!("Owner.{}({})", self.kind(), py_str_repr(&self.name()))
    }
}

/// User name and password for "credentials per mailbox" profiles. The
/// password is write-only (`has_password`).
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct MailboxCredentials {
    pub inner: model::MailboxCredentials,
}

#[pymethods]
impl MailboxCredentials {
    /// Credentials with a user name and password.
    #[new]
    fn new(username: &str, password: &str) -> MailboxCredentials {
        MailboxCredentials {
            inner: model::MailboxCredentials {
                username: username.to_owned(),
                password: Some(model::Secret::new(password)),
            },
        }
    }

    /// User name.
    #[getter]
    fn username(&self) -> String {
        self.inner.username.clone()
    }

    /// Whether a password is set (never the value).
    #[getter]
    fn has_password(&self) -> bool {
        self.inner.password.as_ref().is_some_and(|p| !p.is_empty())
    }

    fn __repr__(&self) -> String {
        format!(
            "MailboxCredentials(username={}, password=<redacted>)",
            py_str_repr(&self.inner.username)
        )
    }
}

/// Result of the last test of one direction: `status` "not_run",
/// "success" or "failure"; `at`, `code` and `reason` where they apply.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct TestStatus {
    pub inner: model::TestStatus,
}

#[pymethods]
impl TestStatus {
    /// "not_run", "success" or "failure".
    #[getter]
    fn status(&self) -> &'static str {
        match self.inner {
            model::TestStatus::NotRun => "not_run",
            model::TestStatus::Success { .. } => "success",
            model::TestStatus::Failure { .. } => "failure",
        }
    }

    /// "success" or "failure" if the test ran, else None.
    #[getter]
    fn outcome(&self) -> Option<String> {
        self.inner.outcome().map(|o| enum_str(&o))
    }

    /// When the test ran (aware datetime), or None.
    #[getter]
    fn at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match &self.inner {
            model::TestStatus::NotRun => Ok(None),
            model::TestStatus::Success { at } | model::TestStatus::Failure { at, .. } => {
                to_datetime(py, at).map(Some)
            }
        }
    }

    /// Stable error code of a failure, else None.
    #[getter]
    fn code(&self) -> Option<String> {
        match &self.inner {
            model::TestStatus::Failure { code, .. } => Some(code.clone()),
            _ => None,
        }
    }

    /// What went wrong, for a failure, else None.
    #[getter]
    fn reason(&self) -> Option<String> {
        match &self.inner {
            model::TestStatus::Failure { reason, .. } => Some(reason.clone()),
            _ => None,
        }
    }

    fn __repr__(&self) -> String {
        format!("TestStatus({})", to_json(&self.inner).unwrap_or_default())
    }
}

/// Whether the mailbox holds working OAuth tokens: `state` is
/// "not_connected", "awaiting_consent", "connected" or "needs_reconsent".
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct ConnectionState {
    pub inner: model::ConnectionState,
}

#[pymethods]
impl ConnectionState {
    /// "not_connected", "awaiting_consent", "connected" or "needs_reconsent".
    #[getter]
    fn state(&self) -> &'static str {
        match self.inner {
            model::ConnectionState::NotConnected => "not_connected",
            model::ConnectionState::AwaitingConsent { .. } => "awaiting_consent",
            model::ConnectionState::Connected { .. } => "connected",
            model::ConnectionState::NeedsReconsent { .. } => "needs_reconsent",
        }
    }

    /// When a pending consent expires ("awaiting_consent"), else None.
    #[getter]
    fn expires_at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match &self.inner {
            model::ConnectionState::AwaitingConsent { expires_at } => {
                to_datetime(py, expires_at).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The Google account that consented ("connected"), else None.
    #[getter]
    fn account(&self) -> Option<String> {
        match &self.inner {
            model::ConnectionState::Connected { account, .. } => Some(account.clone()),
            _ => None,
        }
    }

    /// Since when the mailbox is connected ("connected"), else None.
    #[getter]
    fn since<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match &self.inner {
            model::ConnectionState::Connected { since, .. } => to_datetime(py, since).map(Some),
            _ => Ok(None),
        }
    }

    /// Stable code of the cause ("needs_reconsent"), else None.
    #[getter]
    fn code(&self) -> Option<String> {
        match &self.inner {
            model::ConnectionState::NeedsReconsent { code, .. } => Some(code.clone()),
            _ => None,
        }
    }

    /// Explanation for people ("needs_reconsent"), else None.
    #[getter]
    fn reason(&self) -> Option<String> {
        match &self.inner {
            model::ConnectionState::NeedsReconsent { reason, .. } => Some(reason.clone()),
            _ => None,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "ConnectionState({})",
            to_json(&self.inner).unwrap_or_default()
        )
    }
}

/// An entry on the mailbox's alerts wall.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct Alert {
    pub inner: model::Alert,
}

#[pymethods]
impl Alert {
    /// "info", "warning" or "error".
    #[getter]
    fn level(&self) -> String {
        enum_str(&self.inner.level)
    }

    /// Stable code (an error code, or an event such as "mailbox_enabled").
    #[getter]
    fn code(&self) -> String {
        self.inner.code.clone()
    }

    /// Text for people.
    #[getter]
    fn message(&self) -> String {
        self.inner.message.clone()
    }

    /// When (aware datetime).
    #[getter]
    fn at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_datetime(py, &self.inner.at)
    }

    fn __repr__(&self) -> String {
        format!("Alert({})", to_json(&self.inner).unwrap_or_default())
    }
}

/// A mailbox record, as returned by `MailSync`. Settable properties change
/// this object; call `MailSync.update_mailbox` to store the change.
#[pyclass(module = "mailsync", eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct Mailbox {
    pub inner: model::Mailbox,
}

#[pymethods]
impl Mailbox {
    /// Stable id (a UUID string).
    #[getter]
    fn id(&self) -> String {
        self.inner.id.to_string()
    }

    /// Display name (defaults to the address), at most 200 characters.
    #[getter]
    fn name(&self) -> String {
        self.inner.name.clone()
    }

    #[setter]
    fn set_name(&mut self, value: String) {
        self.inner.name = value;
    }

    /// Email address, lower-cased.
    #[getter]
    fn email(&self) -> String {
        self.inner.email.clone()
    }

    /// User or queue.
    #[getter]
    fn owner(&self) -> Owner {
        Owner {
            inner: self.inner.owner.clone(),
        }
    }

    #[setter]
    fn set_owner(&mut self, value: Owner) {
        self.inner.owner = value.inner;
    }

    /// Server profile id, or None until one is assigned.
    #[getter]
    fn profile_id(&self) -> Option<String> {
        self.inner.profile_id.as_ref().map(ToString::to_string)
    }

    #[setter]
    fn set_profile_id(&mut self, value: Option<&str>) -> PyResult<()> {
        self.inner.profile_id = value.map(|v| guard(|| profile_id(v))).transpose()?;
        Ok(())
    }

    /// "none", "server_side_sync", "email_router" or "forward_mailbox".
    #[getter]
    fn incoming_delivery(&self) -> String {
        enum_str(&self.inner.incoming_delivery)
    }

    #[setter]
    fn set_incoming_delivery(&mut self, value: &str) -> PyResult<()> {
        self.inner.incoming_delivery = guard(|| parse_enum("incoming_delivery", value))?;
        Ok(())
    }

    /// "none", "server_side_sync" or "email_router".
    #[getter]
    fn outgoing_delivery(&self) -> String {
        enum_str(&self.inner.outgoing_delivery)
    }

    #[setter]
    fn set_outgoing_delivery(&mut self, value: &str) -> PyResult<()> {
        self.inner.outgoing_delivery = guard(|| parse_enum("outgoing_delivery", value))?;
        Ok(())
    }

    /// Delete mail from the server after processing (forward and queue mailboxes only).
    #[getter]
    fn delete_after_processing(&self) -> bool {
        self.inner.delete_after_processing
    }

    #[setter]
    fn set_delete_after_processing(&mut self, value: bool) {
        self.inner.delete_after_processing = value;
    }

    /// "empty", "approved", "pending_approval" or "rejected".
    #[getter]
    fn approval(&self) -> String {
        enum_str(&self.inner.approval)
    }

    #[setter]
    fn set_approval(&mut self, value: &str) -> PyResult<()> {
        self.inner.approval = guard(|| parse_enum("approval", value))?;
        Ok(())
    }

    /// Last incoming test.
    #[getter]
    fn incoming_test(&self) -> TestStatus {
        TestStatus {
            inner: self.inner.incoming_test.clone(),
        }
    }

    /// Last outgoing test.
    #[getter]
    fn outgoing_test(&self) -> TestStatus {
        TestStatus {
            inner: self.inner.outgoing_test.clone(),
        }
    }

    /// Incoming sync enabled.
    #[getter]
    fn incoming_enabled(&self) -> bool {
        self.inner.incoming_enabled
    }

    #[setter]
    fn set_incoming_enabled(&mut self, value: bool) {
        self.inner.incoming_enabled = value;
    }

    /// Outgoing sync enabled.
    #[getter]
    fn outgoing_enabled(&self) -> bool {
        self.inner.outgoing_enabled
    }

    #[setter]
    fn set_outgoing_enabled(&mut self, value: bool) {
        self.inner.outgoing_enabled = value;
    }

    /// OAuth connection state.
    #[getter]
    fn connection(&self) -> ConnectionState {
        ConnectionState {
            inner: self.inner.connection.clone(),
        }
    }

    /// Alerts, newest last.
    #[getter]
    fn alerts(&self) -> Vec<Alert> {
        self.inner
            .alerts
            .iter()
            .cloned()
            .map(|inner| Alert { inner })
            .collect()
    }

    /// Per-mailbox credentials (password profiles only), or None.
    #[getter]
    fn credentials(&self) -> Option<MailboxCredentials> {
        self.inner
            .credentials
            .clone()
            .map(|inner| MailboxCredentials { inner })
    }

    #[setter]
    fn set_credentials(&mut self, value: Option<MailboxCredentials>) {
        self.inner.credentials = value.map(|c| c.inner);
    }

    /// Created at (aware datetime).
    #[getter]
    fn created_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_datetime(py, &self.inner.created_at)
    }

    /// Whether this is a forward mailbox.
    #[getter]
    fn is_forward(&self) -> bool {
        self.inner.is_forward()
    }

    /// Checks the rules; raises ValidationError naming the field.
    fn validate(&self) -> PyResult<()> {
        guard(|| self.inner.validate())
    }

    /// The core's JSON (no passwords).
    fn to_json(&self) -> PyResult<String> {
        guard(|| to_json(&self.inner))
    }

    /// The core's JSON as a dict (no passwords).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_dict(py, &self.inner)
    }

    fn __repr__(&self) -> String {
        format!(
            "Mailbox(id='{}', email={}, profile_id={}, connection='{}')",
            self.inner.id,
            py_str_repr(&self.inner.email),
            self.inner
                .profile_id
                .as_ref()
                .map(|p| format!("'{p}'"))
                .unwrap_or_else(|| "None".to_owned()),
            self.connection().state()
        )
    }
}

/// What a caller supplies to create a mailbox; the rest is defaulted.
/// Construct with keyword arguments or with `user`/`queue`/`forward`.
#[pyclass(module = "mailsync", eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct MailboxSpec {
    pub inner: model::MailboxSpec,
}

#[pymethods]
impl MailboxSpec {
    /// A spec for `email`; keyword arguments override the defaults of
    /// `MailboxSpec.user` (server-side sync both ways, approved).
    #[new]
    #[pyo3(signature = (email, *, name=None, owner=None, profile_id=None, incoming_delivery="server_side_sync", outgoing_delivery="server_side_sync", delete_after_processing=false, approval="approved", credentials=None, allow_spill_over=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        email: &str,
        name: Option<String>,
        owner: Option<Owner>,
        profile_id: Option<&str>,
        incoming_delivery: &str,
        outgoing_delivery: &str,
        delete_after_processing: bool,
        approval: &str,
        credentials: Option<MailboxCredentials>,
        allow_spill_over: bool,
    ) -> PyResult<MailboxSpec> {
        guard(|| {
            let mut inner = model::MailboxSpec::user(email);
            inner.name = name;
            inner.owner = owner.map(|o| o.inner);
            inner.profile_id = profile_id.map(crate::convert::profile_id).transpose()?;
            inner.incoming_delivery = parse_enum("incoming_delivery", incoming_delivery)?;
            inner.outgoing_delivery = parse_enum("outgoing_delivery", outgoing_delivery)?;
            inner.delete_after_processing = delete_after_processing;
            inner.approval = parse_enum("approval", approval)?;
            inner.credentials = credentials.map(|c| c.inner);
            inner.allow_spill_over = allow_spill_over;
            Ok(MailboxSpec { inner })
        })
    }

    /// A user's mailbox with server-side sync in both directions.
    #[staticmethod]
    fn user(email: &str) -> MailboxSpec {
        MailboxSpec {
            inner: model::MailboxSpec::user(email),
        }
    }

    /// A queue's mailbox.
    #[staticmethod]
    fn queue(email: &str, queue: &str) -> MailboxSpec {
        MailboxSpec {
            inner: model::MailboxSpec::queue(email, queue),
        }
    }

    /// A forward mailbox: incoming only (outgoing must be "none").
    #[staticmethod]
    fn forward(email: &str) -> MailboxSpec {
        MailboxSpec {
            inner: model::MailboxSpec::forward(email),
        }
    }

    /// A copy that uses this profile instead of the default.
    fn on_profile(&self, profile_id: &str) -> PyResult<MailboxSpec> {
        guard(|| {
            Ok(MailboxSpec {
                inner: self
                    .inner
                    .clone()
                    .on_profile(crate::convert::profile_id(profile_id)?),
            })
        })
    }

    /// A copy that allows (or forbids) spill-over to another profile with
    /// the same OAuth client (core builder `allow_spill_over`).
    #[pyo3(signature = (value=true))]
    fn with_allow_spill_over(&self, value: bool) -> MailboxSpec {
        let mut inner = self.inner.clone();
        inner.allow_spill_over = value;
        MailboxSpec { inner }
    }

    /// Email address.
    #[getter]
    fn email(&self) -> String {
        self.inner.email.clone()
    }

    #[setter]
    fn set_email(&mut self, value: String) {
        self.inner.email = value;
    }

    /// Display name; None means the address.
    #[getter]
    fn name(&self) -> Option<String> {
        self.inner.name.clone()
    }

    #[setter]
    fn set_name(&mut self, value: Option<String>) {
        self.inner.name = value;
    }

    /// Owner; None means the user named by the address.
    #[getter]
    fn owner(&self) -> Option<Owner> {
        self.inner.owner.clone().map(|inner| Owner { inner })
    }

    #[setter]
    fn set_owner(&mut self, value: Option<Owner>) {
        self.inner.owner = value.map(|o| o.inner);
    }

    /// Profile id; None means the default profile.
    #[getter]
    fn profile_id(&self) -> Option<String> {
        self.inner.profile_id.as_ref().map(ToString::to_string)
    }

    #[setter]
    fn set_profile_id(&mut self, value: Option<&str>) -> PyResult<()> {
        self.inner.profile_id = value.map(|v| guard(|| profile_id(v))).transpose()?;
        Ok(())
    }

    /// Incoming delivery method (default "server_side_sync").
    #[getter]
    fn incoming_delivery(&self) -> String {
        enum_str(&self.inner.incoming_delivery)
    }

    #[setter]
    fn set_incoming_delivery(&mut self, value: &str) -> PyResult<()> {
        self.inner.incoming_delivery = guard(|| parse_enum("incoming_delivery", value))?;
        Ok(())
    }

    /// Outgoing delivery method (default "server_side_sync").
    #[getter]
    fn outgoing_delivery(&self) -> String {
        enum_str(&self.inner.outgoing_delivery)
    }

    #[setter]
    fn set_outgoing_delivery(&mut self, value: &str) -> PyResult<()> {
        self.inner.outgoing_delivery = guard(|| parse_enum("outgoing_delivery", value))?;
        Ok(())
    }

    /// Delete mail after processing (forward and queue mailboxes only).
    #[getter]
    fn delete_after_processing(&self) -> bool {
        self.inner.delete_after_processing
    }

    #[setter]
    fn set_delete_after_processing(&mut self, value: bool) {
        self.inner.delete_after_processing = value;
    }

    /// Address approval (default "approved").
    #[getter]
    fn approval(&self) -> String {
        enum_str(&self.inner.approval)
    }

    #[setter]
    fn set_approval(&mut self, value: &str) -> PyResult<()> {
        self.inner.approval = guard(|| parse_enum("approval", value))?;
        Ok(())
    }

    /// Per-mailbox credentials, or None.
    #[getter]
    fn credentials(&self) -> Option<MailboxCredentials> {
        self.inner
            .credentials
            .clone()
            .map(|inner| MailboxCredentials { inner })
    }

    #[setter]
    fn set_credentials(&mut self, value: Option<MailboxCredentials>) {
        self.inner.credentials = value.map(|c| c.inner);
    }

    /// Place the mailbox on a sibling profile with the same OAuth client
    /// when the chosen one is full.
    #[getter]
    fn allow_spill_over(&self) -> bool {
        self.inner.allow_spill_over
    }

    #[setter]
    fn set_allow_spill_over(&mut self, value: bool) {
        self.inner.allow_spill_over = value;
    }

    fn __repr__(&self) -> String {
        format!(
            "MailboxSpec(email={}, profile_id={}, allow_spill_over={})",
            py_str_repr(&self.inner.email),
            self.inner
                .profile_id
                .as_ref()
                .map(|p| format!("'{p}'"))
                .unwrap_or_else(|| "None".to_owned()),
            if self.inner.allow_spill_over {
                "True"
            } else {
                "False"
            }
        )
    }
}
