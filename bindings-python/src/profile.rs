//! Server profiles and their parts (core `model::profile`).

use mailsync::Error;
use mailsync::model;
use pyo3::prelude::*;

use crate::app::OAuthApp;
use crate::convert::{
    enum_str, from_datetime, int_in, parse_enum, py_str_repr, to_datetime, to_dict, to_json,
};
use crate::errors::{guard, guard_py, to_py_err};

/// A host, port and security setting ("tls" | "start_tls" | "plaintext").
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct Endpoint {
    pub inner: model::Endpoint,
}

#[pymethods]
impl Endpoint {
    /// A new endpoint. `port` outside 0–65535 or an unknown `security`
    /// raises ValidationError; port 0 and bad hosts are refused when the
    /// profile is validated (with the field named, e.g. `incoming.port`).
    #[new]
    #[pyo3(signature = (host, port, security))]
    fn new(host: &str, port: i64, security: &str) -> PyResult<Endpoint> {
        guard(|| {
            let port = int_in::<u16>("port", port, 0, 65535)?;
            let security = parse_enum("security", security)?;
            Ok(Endpoint {
                inner: model::Endpoint::new(host, port, security),
            })
        })
    }

    /// Host name or IP address.
    #[getter]
    fn host(&self) -> String {
        self.inner.host.clone()
    }

    /// TCP port.
    #[getter]
    fn port(&self) -> u16 {
        self.inner.port
    }

    /// "tls", "start_tls" or "plaintext".
    #[getter]
    fn security(&self) -> String {
        enum_str(&self.inner.security)
    }

    /// Whether the host is `localhost` or a loopback address.
    #[getter]
    fn is_loopback(&self) -> bool {
        self.inner.is_loopback()
    }

    fn __repr__(&self) -> String {
        format!(
            "Endpoint(host={}, port={}, security='{}')",
            py_str_repr(&self.inner.host),
            self.inner.port,
            enum_str(&self.inner.security)
        )
    }
}

/// Where incoming mail is read from: protocol ("imap" | "pop3") plus an endpoint.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct IncomingEndpoint {
    pub inner: model::IncomingEndpoint,
}

#[pymethods]
impl IncomingEndpoint {
    /// A new incoming endpoint ("imap" or "pop3").
    #[new]
    #[pyo3(signature = (protocol, endpoint))]
    fn new(protocol: &str, endpoint: Endpoint) -> PyResult<IncomingEndpoint> {
        guard(|| {
            Ok(IncomingEndpoint {
                inner: model::IncomingEndpoint {
                    protocol: parse_enum("protocol", protocol)?,
                    endpoint: endpoint.inner,
                },
            })
        })
    }

    /// "imap" or "pop3".
    #[getter]
    fn protocol(&self) -> String {
        enum_str(&self.inner.protocol)
    }

    /// Host, port and security.
    #[getter]
    fn endpoint(&self) -> Endpoint {
        Endpoint {
            inner: self.inner.endpoint.clone(),
        }
    }

    /// Shortcut for `endpoint.host`.
    #[getter]
    fn host(&self) -> String {
        self.inner.endpoint.host.clone()
    }

    /// Shortcut for `endpoint.port`.
    #[getter]
    fn port(&self) -> u16 {
        self.inner.endpoint.port
    }

    /// Shortcut for `endpoint.security`.
    #[getter]
    fn security(&self) -> String {
        enum_str(&self.inner.endpoint.security)
    }

    fn __repr__(&self) -> String {
        format!(
            "IncomingEndpoint(protocol='{}', host={}, port={}, security='{}')",
            enum_str(&self.inner.protocol),
            py_str_repr(&self.inner.endpoint.host),
            self.inner.endpoint.port,
            enum_str(&self.inner.endpoint.security)
        )
    }
}

/// How a profile's mailboxes authenticate. `kind` is one of
/// "gmail_oauth", "oauth_provider", "credentials_in_profile",
/// "credentials_per_mailbox". Passwords are write-only (`has_password`).
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct Authentication {
    pub inner: model::Authentication,
}

#[pymethods]
impl Authentication {
    /// Gmail OAuth with the app's client.
    #[staticmethod]
    fn gmail_oauth(app: OAuthApp) -> Authentication {
        Authentication {
            inner: model::Authentication::GmailOAuth { app: app.inner },
        }
    }

    /// Any OAuth 2.0 / OIDC provider found through its issuer URL.
    #[staticmethod]
    fn oauth_provider(issuer: &str, app: OAuthApp) -> Authentication {
        Authentication {
            inner: model::Authentication::OAuthProvider {
                issuer: issuer.to_owned(),
                app: app.inner,
            },
        }
    }

    /// One user name and password stored in the profile.
    #[staticmethod]
    #[pyo3(signature = (username, password))]
    fn credentials_in_profile(username: &str, password: &str) -> Authentication {
        Authentication {
            inner: model::Authentication::CredentialsInProfile {
                username: username.to_owned(),
                password: Some(model::Secret::new(password)),
            },
        }
    }

    /// Each mailbox carries its own user name and password.
    #[staticmethod]
    fn credentials_per_mailbox() -> Authentication {
        Authentication {
            inner: model::Authentication::CredentialsPerMailbox,
        }
    }

    /// "gmail_oauth", "oauth_provider", "credentials_in_profile" or "credentials_per_mailbox".
    #[getter]
    fn kind(&self) -> &'static str {
        match &self.inner {
            model::Authentication::GmailOAuth { .. } => "gmail_oauth",
            model::Authentication::OAuthProvider { .. } => "oauth_provider",
            model::Authentication::CredentialsInProfile { .. } => "credentials_in_profile",
            model::Authentication::CredentialsPerMailbox => "credentials_per_mailbox",
        }
    }

    /// The OAuth app for OAuth kinds, else None.
    #[getter]
    fn app(&self) -> Option<OAuthApp> {
        self.inner
            .oauth_app()
            .map(|a| OAuthApp { inner: a.clone() })
    }

    /// The issuer URL for "oauth_provider", else None.
    #[getter]
    fn issuer(&self) -> Option<String> {
        match &self.inner {
            model::Authentication::OAuthProvider { issuer, .. } => Some(issuer.clone()),
            _ => None,
        }
    }

    /// The user name for "credentials_in_profile", else None.
    #[getter]
    fn username(&self) -> Option<String> {
        match &self.inner {
            model::Authentication::CredentialsInProfile { username, .. } => Some(username.clone()),
            _ => None,
        }
    }

    /// Whether a profile password is set (never the value).
    #[getter]
    fn has_password(&self) -> bool {
        matches!(&self.inner, model::Authentication::CredentialsInProfile { password: Some(p), .. } if !p.is_empty())
    }

    /// Whether authentication uses OAuth tokens.
    #[getter]
    fn is_oauth(&self) -> bool {
        self.inner.is_oauth()
    }

    /// The core's JSON as a dict (no secrets).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_dict(py, &self.inner)
    }

    fn __repr__(&self) -> String {
        match &self.inner {
            model::Authentication::GmailOAuth { app } => {
                format!(
                    "Authentication.gmail_oauth({})",
                    OAuthApp { inner: app.clone() }.__repr__()
                )
            }
            model::Authentication::OAuthProvider { issuer, app } => format!(
                "Authentication.oauth_provider({}, {})",
                py_str_repr(issuer),
                OAuthApp { inner: app.clone() }.__repr__()
            ),
            model::Authentication::CredentialsInProfile { username, .. } => format!(
                "Authentication.credentials_in_profile({}, password=<redacted>)",
                py_str_repr(username)
            ),
            model::Authentication::CredentialsPerMailbox => {
                "Authentication.credentials_per_mailbox()".to_owned()
            }
        }
    }
}

/// The profile's "Advanced" options. Immutable; build a new one with
/// keyword arguments (defaults are the core's) and assign it to
/// `ServerProfile.processing`.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct ProcessingOptions {
    pub inner: model::ProcessingOptions,
}

#[pymethods]
impl ProcessingOptions {
    /// Options with the core's defaults, overridden by the keyword arguments.
    /// Out-of-range values raise ValidationError naming the field.
    #[new]
    #[pyo3(signature = (*, process_email_received_after=None, min_polling_interval_minutes=5, max_concurrent_connections=10, move_failed_to_undeliverable=false, alert_owner_on_major_events=false, connection_timeout_secs=60))]
    fn new(
        process_email_received_after: Option<&Bound<'_, PyAny>>,
        min_polling_interval_minutes: i64,
        max_concurrent_connections: i64,
        move_failed_to_undeliverable: bool,
        alert_owner_on_major_events: bool,
        connection_timeout_secs: i64,
    ) -> PyResult<ProcessingOptions> {
        guard_py(|| {
            let after = match process_email_received_after {
                Some(v) if !v.is_none() => {
                    Some(from_datetime("processing.process_email_received_after", v)?)
                }
                _ => None,
            };
            let build = || -> Result<model::ProcessingOptions, Error> {
                Ok(model::ProcessingOptions {
                    process_email_received_after: after,
                    min_polling_interval_minutes: int_in(
                        "processing.min_polling_interval_minutes",
                        min_polling_interval_minutes,
                        0,
                        1440,
                    )?,
                    max_concurrent_connections: int_in(
                        "processing.max_concurrent_connections",
                        max_concurrent_connections,
                        1,
                        300,
                    )?,
                    move_failed_to_undeliverable,
                    alert_owner_on_major_events,
                    connection_timeout_secs: int_in(
                        "processing.connection_timeout_secs",
                        connection_timeout_secs,
                        1,
                        100,
                    )?,
                })
            };
            Ok(ProcessingOptions {
                inner: build().map_err(to_py_err)?,
            })
        })
    }

    /// Only mail received after this instant is processed (aware datetime or None).
    #[getter]
    fn process_email_received_after<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner
            .process_email_received_after
            .as_ref()
            .map(|t| to_datetime(py, t))
            .transpose()
    }

    /// Minimum minutes between two polls of a mailbox, 0–1440.
    #[getter]
    fn min_polling_interval_minutes(&self) -> u16 {
        self.inner.min_polling_interval_minutes
    }

    /// Maximum concurrent connections, 1–300.
    #[getter]
    fn max_concurrent_connections(&self) -> u16 {
        self.inner.max_concurrent_connections
    }

    /// Move mail that fails processing to an "Undeliverable" folder.
    #[getter]
    fn move_failed_to_undeliverable(&self) -> bool {
        self.inner.move_failed_to_undeliverable
    }

    /// Alert the profile owner on major events.
    #[getter]
    fn alert_owner_on_major_events(&self) -> bool {
        self.inner.alert_owner_on_major_events
    }

    /// Connection timeout in seconds (1–100).
    #[getter]
    fn connection_timeout_secs(&self) -> u16 {
        self.inner.connection_timeout_secs
    }

    fn __repr__(&self) -> String {
        format!(
            "ProcessingOptions({})",
            to_json(&self.inner).unwrap_or_default()
        )
    }
}

/// Outcome of the last profile-level test.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct LastTestResult {
    pub inner: model::LastTestResult,
}

#[pymethods]
impl LastTestResult {
    /// "success", "failure" or "warning".
    #[getter]
    fn outcome(&self) -> String {
        enum_str(&self.inner.outcome)
    }

    /// When the test ran (aware datetime).
    #[getter]
    fn at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_datetime(py, &self.inner.at)
    }

    /// How long it took, in milliseconds.
    #[getter]
    fn duration_ms(&self) -> u64 {
        self.inner.duration_ms
    }

    /// What happened, for people.
    #[getter]
    fn message(&self) -> String {
        self.inner.message.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "LastTestResult({})",
            to_json(&self.inner).unwrap_or_default()
        )
    }
}

/// An email server profile. Build one with `ServerProfile.gmail` or
/// `ServerProfile.generic`; the builder methods return a new profile, and
/// the settable properties change this one in place (then call
/// `MailSync.update_profile`). Nested values (endpoints, processing, app)
/// are immutable: assign a new one instead of mutating.
#[pyclass(module = "mailsync", eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct ServerProfile {
    pub inner: model::ServerProfile,
}

#[pymethods]
impl ServerProfile {
    /// A Gmail profile with Gmail OAuth, IMAP imap.gmail.com:993 TLS and
    /// SMTP smtp.gmail.com:587 STARTTLS, capacity 100.
    #[staticmethod]
    #[pyo3(signature = (name, app, *, default_for_new_mailboxes=false))]
    fn gmail(
        name: &str,
        app: OAuthApp,
        default_for_new_mailboxes: bool,
    ) -> PyResult<ServerProfile> {
        guard(|| {
            let mut inner = model::ServerProfile::gmail(name, app.inner);
            inner.default_for_new_mailboxes = default_for_new_mailboxes;
            Ok(ServerProfile { inner })
        })
    }

    /// A generic profile for any IMAP or POP3 server plus SMTP.
    #[staticmethod]
    #[pyo3(signature = (name, incoming, outgoing, authentication, *, default_for_new_mailboxes=false))]
    fn generic(
        name: &str,
        incoming: IncomingEndpoint,
        outgoing: Endpoint,
        authentication: Authentication,
        default_for_new_mailboxes: bool,
    ) -> PyResult<ServerProfile> {
        guard(|| {
            let mut inner = model::ServerProfile::generic(
                name,
                incoming.inner,
                outgoing.inner,
                authentication.inner,
            );
            inner.default_for_new_mailboxes = default_for_new_mailboxes;
            Ok(ServerProfile { inner })
        })
    }

    /// A copy that reads incoming mail over POP3 (pop.gmail.com:995 TLS for Gmail).
    fn use_pop3(&self) -> PyResult<ServerProfile> {
        guard(|| {
            Ok(ServerProfile {
                inner: self.inner.clone().use_pop3(),
            })
        })
    }

    /// A copy that sends over implicit TLS on port 465 instead of STARTTLS on 587.
    fn use_smtp_tls_465(&self) -> PyResult<ServerProfile> {
        guard(|| {
            Ok(ServerProfile {
                inner: self.inner.clone().use_smtp_tls_465(),
            })
        })
    }

    /// A copy marked (or unmarked) as the default for new mailboxes
    /// (core builder `default_for_new_mailboxes`).
    #[pyo3(signature = (value=true))]
    fn with_default_for_new_mailboxes(&self, value: bool) -> ServerProfile {
        let mut inner = self.inner.clone();
        inner.default_for_new_mailboxes = value;
        ServerProfile { inner }
    }

    /// A copy whose incoming side points at `endpoint`.
    fn with_incoming(&self, endpoint: Endpoint) -> PyResult<ServerProfile> {
        guard(|| {
            Ok(ServerProfile {
                inner: self.inner.clone().with_incoming(endpoint.inner),
            })
        })
    }

    /// A copy whose outgoing side points at `endpoint`.
    fn with_outgoing(&self, endpoint: Endpoint) -> PyResult<ServerProfile> {
        guard(|| {
            Ok(ServerProfile {
                inner: self.inner.clone().with_outgoing(endpoint.inner),
            })
        })
    }

    /// A copy with another mailbox capacity (at most 100 for OAuth profiles).
    fn with_mailbox_capacity(&self, capacity: i64) -> PyResult<ServerProfile> {
        guard(|| {
            let capacity = int_in("mailbox_capacity", capacity, 0, i64::from(u32::MAX))?;
            Ok(ServerProfile {
                inner: self.inner.clone().with_mailbox_capacity(capacity),
            })
        })
    }

    /// Checks every field; raises ValidationError naming the first field at fault.
    fn validate(&self) -> PyResult<()> {
        guard(|| self.inner.validate())
    }

    /// Stable id (a UUID string), assigned on creation.
    #[getter]
    fn id(&self) -> String {
        self.inner.id.to_string()
    }

    /// Unique display name, 1–100 characters.
    #[getter]
    fn name(&self) -> String {
        self.inner.name.clone()
    }

    #[setter]
    fn set_name(&mut self, value: String) {
        self.inner.name = value;
    }

    /// "gmail", "imap_smtp" or "pop3_smtp".
    #[getter]
    fn server_type(&self) -> String {
        enum_str(&self.inner.server_type)
    }

    /// How mailboxes authenticate.
    #[getter]
    fn authentication(&self) -> Authentication {
        Authentication {
            inner: self.inner.authentication.clone(),
        }
    }

    #[setter]
    fn set_authentication(&mut self, value: Authentication) {
        self.inner.authentication = value.inner;
    }

    /// The OAuth app when the profile authenticates with OAuth, else None.
    #[getter]
    fn oauth_app(&self) -> Option<OAuthApp> {
        self.inner
            .oauth_app()
            .map(|a| OAuthApp { inner: a.clone() })
    }

    /// Whether the profile's OAuth app has a client secret (never the value).
    #[getter]
    fn has_client_secret(&self) -> bool {
        self.inner
            .oauth_app()
            .and_then(|a| a.client_secret.as_ref())
            .is_some_and(|s| !s.is_empty())
    }

    /// Incoming server.
    #[getter]
    fn incoming(&self) -> IncomingEndpoint {
        IncomingEndpoint {
            inner: self.inner.incoming.clone(),
        }
    }

    #[setter]
    fn set_incoming(&mut self, value: IncomingEndpoint) {
        self.inner.incoming = value.inner;
    }

    /// Outgoing (SMTP) server.
    #[getter]
    fn outgoing(&self) -> Endpoint {
        Endpoint {
            inner: self.inner.outgoing.clone(),
        }
    }

    #[setter]
    fn set_outgoing(&mut self, value: Endpoint) {
        self.inner.outgoing = value.inner;
    }

    /// Use the incoming credentials for outgoing connections too.
    #[getter]
    fn use_same_settings_for_outgoing(&self) -> bool {
        self.inner.use_same_settings_for_outgoing
    }

    #[setter]
    fn set_use_same_settings_for_outgoing(&mut self, value: bool) {
        self.inner.use_same_settings_for_outgoing = value;
    }

    /// Advanced options.
    #[getter]
    fn processing(&self) -> ProcessingOptions {
        ProcessingOptions {
            inner: self.inner.processing.clone(),
        }
    }

    #[setter]
    fn set_processing(&mut self, value: ProcessingOptions) {
        self.inner.processing = value.inner;
    }

    /// New mailboxes get this profile unless another is named.
    #[getter]
    fn default_for_new_mailboxes(&self) -> bool {
        self.inner.default_for_new_mailboxes
    }

    #[setter]
    fn set_default_for_new_mailboxes(&mut self, value: bool) {
        self.inner.default_for_new_mailboxes = value;
    }

    /// Mailboxes this profile may hold; at most 100 for OAuth profiles.
    #[getter]
    fn mailbox_capacity(&self) -> u32 {
        self.inner.mailbox_capacity
    }

    #[setter]
    fn set_mailbox_capacity(&mut self, value: i64) -> PyResult<()> {
        self.inner.mailbox_capacity =
            guard(|| int_in("mailbox_capacity", value, 0, i64::from(u32::MAX)))?;
        Ok(())
    }

    /// Allow "plaintext" endpoints on loopback hosts (tests, local relays).
    #[getter]
    fn allow_plaintext_on_loopback(&self) -> bool {
        self.inner.allow_plaintext_on_loopback
    }

    #[setter]
    fn set_allow_plaintext_on_loopback(&mut self, value: bool) {
        self.inner.allow_plaintext_on_loopback = value;
    }

    /// Last profile-level test, or None.
    #[getter]
    fn last_test(&self) -> Option<LastTestResult> {
        self.inner
            .last_test
            .clone()
            .map(|inner| LastTestResult { inner })
    }

    /// The core's JSON (no secrets).
    fn to_json(&self) -> PyResult<String> {
        guard(|| to_json(&self.inner))
    }

    /// The core's JSON as a dict (no secrets).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_dict(py, &self.inner)
    }

    fn __repr__(&self) -> String {
        format!(
            "ServerProfile(id='{}', name={}, server_type='{}', authentication={}, default_for_new_mailboxes={}, mailbox_capacity={})",
            self.inner.id,
            py_str_repr(&self.inner.name),
            enum_str(&self.inner.server_type),
            self.authentication().__repr__(),
            if self.inner.default_for_new_mailboxes {
                "True"
            } else {
                "False"
            },
            self.inner.mailbox_capacity
        )
    }
}
