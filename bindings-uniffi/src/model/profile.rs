//! `ServerProfile`, its authentication, endpoints and processing options.

use std::sync::Arc;
use std::time::SystemTime;

use mailsync::model as core;

use super::app::{OAuthApp, json_error};
use crate::convert::{from_system_time, int_in, mirror_enum, to_system_time};
use crate::error::{Result, guard, guard_ok};

mirror_enum! {
    /// What kind of server the profile talks to.
    ServerType => core::ServerType {
        /// Gmail (IMAP or POP in, SMTP out, Gmail OAuth).
        Gmail,
        /// Any IMAP server with SMTP.
        ImapSmtp,
        /// Any POP3 server with SMTP.
        Pop3Smtp,
    }
}

mirror_enum! {
    /// How a connection is protected.
    Security => core::Security {
        /// TLS from the first byte.
        Tls,
        /// Plain connection upgraded with STARTTLS/STLS.
        StartTls,
        /// No encryption (loopback only, when the profile allows it).
        Plaintext,
    }
}

mirror_enum! {
    /// Protocol used for incoming mail.
    IncomingProtocol => core::IncomingProtocol {
        /// IMAP4rev1.
        Imap,
        /// POP3.
        Pop3,
    }
}

mirror_enum! {
    /// Outcome of a test.
    TestOutcome => mailsync::model::TestOutcome {
        /// Everything passed.
        Success,
        /// Something failed.
        Failure,
        /// Passed with something to look at.
        Warning,
    }
}

/// A host, port and security setting.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Endpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port, 1–65535 (anything else is a `validation` error naming the port).
    pub port: i32,
    /// Transport security.
    pub security: Security,
}

impl From<core::Endpoint> for Endpoint {
    fn from(e: core::Endpoint) -> Self {
        Endpoint {
            host: e.host,
            port: i32::from(e.port),
            security: e.security.into(),
        }
    }
}

impl Endpoint {
    pub(crate) fn to_core(&self, field: &str) -> mailsync::Result<core::Endpoint> {
        let port = int_in(&format!("{field}.port"), i64::from(self.port), 0, 65535)?;
        Ok(core::Endpoint::new(
            self.host.clone(),
            port,
            self.security.into(),
        ))
    }
}

/// Where incoming mail is read from.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct IncomingEndpoint {
    /// IMAP or POP3.
    pub protocol: IncomingProtocol,
    /// Host name or IP address.
    pub host: String,
    /// TCP port, 1–65535.
    pub port: i32,
    /// Transport security.
    pub security: Security,
}

impl From<core::IncomingEndpoint> for IncomingEndpoint {
    fn from(e: core::IncomingEndpoint) -> Self {
        let endpoint = Endpoint::from(e.endpoint);
        IncomingEndpoint {
            protocol: e.protocol.into(),
            host: endpoint.host,
            port: endpoint.port,
            security: endpoint.security,
        }
    }
}

impl IncomingEndpoint {
    fn to_core(&self) -> mailsync::Result<core::IncomingEndpoint> {
        let endpoint = Endpoint {
            host: self.host.clone(),
            port: self.port,
            security: self.security,
        }
        .to_core("incoming")?;
        Ok(core::IncomingEndpoint {
            protocol: self.protocol.into(),
            endpoint,
        })
    }
}

/// The profile's "Advanced" options.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ProcessingOptions {
    /// Only mail received after this instant is processed.
    pub process_email_received_after: Option<SystemTime>,
    /// Minimum minutes between two polls of a mailbox, 0–1440.
    pub min_polling_interval_minutes: i32,
    /// Maximum concurrent connections, 1–300.
    pub max_concurrent_connections: i32,
    /// Move mail that fails processing to an "Undeliverable" folder.
    pub move_failed_to_undeliverable: bool,
    /// Alert the profile owner on major events.
    pub alert_owner_on_major_events: bool,
    /// Connection timeout in seconds, 1–100.
    pub connection_timeout_secs: i32,
}

impl From<core::ProcessingOptions> for ProcessingOptions {
    fn from(p: core::ProcessingOptions) -> Self {
        ProcessingOptions {
            process_email_received_after: p.process_email_received_after.map(to_system_time),
            min_polling_interval_minutes: i32::from(p.min_polling_interval_minutes),
            max_concurrent_connections: i32::from(p.max_concurrent_connections),
            move_failed_to_undeliverable: p.move_failed_to_undeliverable,
            alert_owner_on_major_events: p.alert_owner_on_major_events,
            connection_timeout_secs: i32::from(p.connection_timeout_secs),
        }
    }
}

impl ProcessingOptions {
    fn to_core(&self) -> mailsync::Result<core::ProcessingOptions> {
        let field = |name: &str| format!("processing.{name}");
        let max = i64::from(u16::MAX);
        Ok(core::ProcessingOptions {
            process_email_received_after: self.process_email_received_after.map(from_system_time),
            min_polling_interval_minutes: int_in(
                &field("min_polling_interval_minutes"),
                i64::from(self.min_polling_interval_minutes),
                0,
                max,
            )?,
            max_concurrent_connections: int_in(
                &field("max_concurrent_connections"),
                i64::from(self.max_concurrent_connections),
                0,
                max,
            )?,
            move_failed_to_undeliverable: self.move_failed_to_undeliverable,
            alert_owner_on_major_events: self.alert_owner_on_major_events,
            connection_timeout_secs: int_in(
                &field("connection_timeout_secs"),
                i64::from(self.connection_timeout_secs),
                0,
                max,
            )?,
        })
    }
}

/// Outcome of the last profile-level test.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct LastTestResult {
    /// Success, Failure or Warning.
    pub outcome: TestOutcome,
    /// When the test ran.
    pub at: SystemTime,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// What happened, for people.
    pub message: String,
}

impl From<core::LastTestResult> for LastTestResult {
    fn from(t: core::LastTestResult) -> Self {
        LastTestResult {
            outcome: t.outcome.into(),
            at: to_system_time(t.at),
            duration_ms: t.duration_ms,
            message: t.message,
        }
    }
}

/// Which kind of authentication a profile uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum AuthenticationKind {
    /// Gmail OAuth.
    GmailOAuth,
    /// Any OAuth 2.0 / OIDC provider (by issuer).
    OAuthProvider,
    /// One user name and password stored in the profile.
    CredentialsInProfile,
    /// Each mailbox carries its own credentials.
    CredentialsPerMailbox,
}

/// How a profile's mailboxes authenticate. An object (not an enum) because
/// it can hold a secret (the app's client secret or the profile password),
/// which is given to a constructor and never readable afterwards.
#[derive(uniffi::Object)]
#[uniffi::export(Debug)]
pub struct Authentication {
    pub(crate) inner: core::Authentication,
}

impl std::fmt::Debug for Authentication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Authentication {
    fn wrap(inner: core::Authentication) -> Arc<Authentication> {
        Arc::new(Authentication { inner })
    }
}

#[uniffi::export]
impl Authentication {
    /// Gmail OAuth with this app.
    #[uniffi::constructor]
    pub fn gmail_oauth(app: Arc<OAuthApp>) -> Arc<Authentication> {
        Authentication::wrap(core::Authentication::GmailOAuth {
            app: app.inner.clone(),
        })
    }

    /// Any OAuth 2.0 / OIDC provider found through its issuer.
    #[uniffi::constructor]
    pub fn oauth_provider(issuer: String, app: Arc<OAuthApp>) -> Arc<Authentication> {
        Authentication::wrap(core::Authentication::OAuthProvider {
            issuer,
            app: app.inner.clone(),
        })
    }

    /// One user name and password stored (sealed) in the profile.
    #[uniffi::constructor]
    pub fn credentials_in_profile(
        username: String,
        password: Option<String>,
    ) -> Arc<Authentication> {
        Authentication::wrap(core::Authentication::CredentialsInProfile {
            username,
            password: password.map(core::Secret::new),
        })
    }

    /// Each mailbox carries its own user name and password.
    #[uniffi::constructor]
    pub fn credentials_per_mailbox() -> Arc<Authentication> {
        Authentication::wrap(core::Authentication::CredentialsPerMailbox)
    }

    /// Which kind this is.
    pub fn kind(&self) -> AuthenticationKind {
        match &self.inner {
            core::Authentication::GmailOAuth { .. } => AuthenticationKind::GmailOAuth,
            core::Authentication::OAuthProvider { .. } => AuthenticationKind::OAuthProvider,
            core::Authentication::CredentialsInProfile { .. } => {
                AuthenticationKind::CredentialsInProfile
            }
            core::Authentication::CredentialsPerMailbox => {
                AuthenticationKind::CredentialsPerMailbox
            }
        }
    }

    /// The OAuth app, for the OAuth kinds.
    pub fn oauth_app(&self) -> Option<Arc<OAuthApp>> {
        self.inner.oauth_app().cloned().map(OAuthApp::wrap)
    }

    /// The issuer URL, for `O_AUTH_PROVIDER`.
    pub fn issuer(&self) -> Option<String> {
        match &self.inner {
            core::Authentication::OAuthProvider { issuer, .. } => Some(issuer.clone()),
            _ => None,
        }
    }

    /// The user name, for `CREDENTIALS_IN_PROFILE`.
    pub fn username(&self) -> Option<String> {
        match &self.inner {
            core::Authentication::CredentialsInProfile { username, .. } => Some(username.clone()),
            _ => None,
        }
    }

    /// Whether a profile password is set (its value is never exposed).
    pub fn has_password(&self) -> bool {
        matches!(&self.inner, core::Authentication::CredentialsInProfile { password: Some(p), .. } if !p.is_empty())
    }

    /// Whether authentication uses OAuth tokens.
    pub fn is_oauth(&self) -> bool {
        self.inner.is_oauth()
    }
}

/// An email server profile. Immutable: builder and `with…` methods return a
/// new profile; pass it to `MailSync.createProfile` / `updateProfile`.
#[derive(uniffi::Object)]
#[uniffi::export(Debug)]
pub struct ServerProfile {
    pub(crate) inner: core::ServerProfile,
}

impl std::fmt::Debug for ServerProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl ServerProfile {
    pub(crate) fn wrap(inner: core::ServerProfile) -> Arc<ServerProfile> {
        Arc::new(ServerProfile { inner })
    }

    fn map(
        &self,
        f: impl FnOnce(core::ServerProfile) -> mailsync::Result<core::ServerProfile>,
    ) -> Result<Arc<ServerProfile>> {
        let profile = self.inner.clone();
        guard(|| f(profile).map(ServerProfile::wrap))
    }
}

#[uniffi::export]
impl ServerProfile {
    /// A Gmail profile: Gmail OAuth, `imap.gmail.com:993` TLS,
    /// `smtp.gmail.com:587` STARTTLS, capacity 100.
    #[uniffi::constructor]
    pub fn gmail(name: String, app: Arc<OAuthApp>) -> Result<Arc<ServerProfile>> {
        guard_ok(|| ServerProfile::wrap(core::ServerProfile::gmail(name, app.inner.clone())))
    }

    /// A generic profile for any IMAP or POP3 server plus SMTP.
    #[uniffi::constructor]
    pub fn generic(
        name: String,
        incoming: IncomingEndpoint,
        outgoing: Endpoint,
        authentication: Arc<Authentication>,
    ) -> Result<Arc<ServerProfile>> {
        guard(|| {
            Ok(ServerProfile::wrap(core::ServerProfile::generic(
                name,
                incoming.to_core()?,
                outgoing.to_core("outgoing")?,
                authentication.inner.clone(),
            )))
        })
    }

    /// Read incoming mail over POP3 (`pop.gmail.com:995` TLS for Gmail).
    pub fn use_pop3(&self) -> Result<Arc<ServerProfile>> {
        self.map(|p| Ok(p.use_pop3()))
    }

    /// Send over implicit TLS on port 465 instead of STARTTLS on 587.
    pub fn use_smtp_tls_465(&self) -> Result<Arc<ServerProfile>> {
        self.map(|p| Ok(p.use_smtp_tls_465()))
    }

    /// Mark as the default profile for new mailboxes.
    pub fn default_for_new_mailboxes(&self) -> Result<Arc<ServerProfile>> {
        self.map(|p| Ok(p.default_for_new_mailboxes()))
    }

    /// Point the incoming side somewhere else (keeps the protocol).
    pub fn with_incoming(&self, endpoint: Endpoint) -> Result<Arc<ServerProfile>> {
        self.map(|p| Ok(p.with_incoming(endpoint.to_core("incoming")?)))
    }

    /// Point the outgoing side somewhere else.
    pub fn with_outgoing(&self, endpoint: Endpoint) -> Result<Arc<ServerProfile>> {
        self.map(|p| Ok(p.with_outgoing(endpoint.to_core("outgoing")?)))
    }

    /// Cap the mailboxes (1 to 100 for OAuth profiles).
    pub fn with_mailbox_capacity(&self, capacity: i64) -> Result<Arc<ServerProfile>> {
        self.map(|p| {
            Ok(p.with_mailbox_capacity(int_in(
                "mailbox_capacity",
                capacity,
                0,
                i64::from(u32::MAX),
            )?))
        })
    }

    /// Another display name.
    pub fn with_name(&self, name: String) -> Result<Arc<ServerProfile>> {
        self.map(|mut p| {
            p.name = name;
            Ok(p)
        })
    }

    /// Another authentication.
    pub fn with_authentication(
        &self,
        authentication: Arc<Authentication>,
    ) -> Result<Arc<ServerProfile>> {
        self.map(|mut p| {
            p.authentication = authentication.inner.clone();
            Ok(p)
        })
    }

    /// Other advanced options.
    pub fn with_processing(&self, processing: ProcessingOptions) -> Result<Arc<ServerProfile>> {
        self.map(|mut p| {
            p.processing = processing.to_core()?;
            Ok(p)
        })
    }

    /// Whether outgoing connections use the incoming credentials.
    pub fn with_use_same_settings_for_outgoing(&self, value: bool) -> Result<Arc<ServerProfile>> {
        self.map(|mut p| {
            p.use_same_settings_for_outgoing = value;
            Ok(p)
        })
    }

    /// Set or clear "default for new mailboxes".
    pub fn with_default_for_new_mailboxes(&self, value: bool) -> Result<Arc<ServerProfile>> {
        self.map(|mut p| {
            p.default_for_new_mailboxes = value;
            Ok(p)
        })
    }

    /// Allow plaintext endpoints on loopback hosts (tests, local relays).
    pub fn with_allow_plaintext_on_loopback(&self, value: bool) -> Result<Arc<ServerProfile>> {
        self.map(|mut p| {
            p.allow_plaintext_on_loopback = value;
            Ok(p)
        })
    }

    /// Checks every field; a `validation` error names the first field at fault.
    pub fn validate(&self) -> Result<()> {
        guard(|| self.inner.validate())
    }

    /// Stable id (a UUID), assigned on creation.
    pub fn id(&self) -> String {
        self.inner.id.to_string()
    }

    /// Display name.
    pub fn name(&self) -> String {
        self.inner.name.clone()
    }

    /// Server type.
    pub fn server_type(&self) -> ServerType {
        self.inner.server_type.into()
    }

    /// How mailboxes authenticate.
    pub fn authentication(&self) -> Arc<Authentication> {
        Authentication::wrap(self.inner.authentication.clone())
    }

    /// The OAuth app, if the profile authenticates with OAuth.
    pub fn oauth_app(&self) -> Option<Arc<OAuthApp>> {
        self.inner.oauth_app().cloned().map(OAuthApp::wrap)
    }

    /// Whether the profile's OAuth app has a client secret (never exposed).
    pub fn has_client_secret(&self) -> bool {
        self.inner
            .oauth_app()
            .and_then(|a| a.client_secret.as_ref())
            .is_some_and(|s| !s.is_empty())
    }

    /// Incoming server.
    pub fn incoming(&self) -> IncomingEndpoint {
        self.inner.incoming.clone().into()
    }

    /// Outgoing (SMTP) server.
    pub fn outgoing(&self) -> Endpoint {
        self.inner.outgoing.clone().into()
    }

    /// Whether outgoing connections use the incoming credentials.
    pub fn use_same_settings_for_outgoing(&self) -> bool {
        self.inner.use_same_settings_for_outgoing
    }

    /// Advanced options.
    pub fn processing(&self) -> ProcessingOptions {
        self.inner.processing.clone().into()
    }

    /// Whether new mailboxes get this profile unless another is named.
    pub fn is_default_for_new_mailboxes(&self) -> bool {
        self.inner.default_for_new_mailboxes
    }

    /// Mailboxes this profile may hold.
    pub fn mailbox_capacity(&self) -> i64 {
        i64::from(self.inner.mailbox_capacity)
    }

    /// Whether plaintext endpoints are allowed on loopback hosts.
    pub fn allow_plaintext_on_loopback(&self) -> bool {
        self.inner.allow_plaintext_on_loopback
    }

    /// Last profile-level test.
    pub fn last_test(&self) -> Option<LastTestResult> {
        self.inner.last_test.clone().map(LastTestResult::from)
    }

    /// The core's JSON form (never contains secrets).
    pub fn to_json(&self) -> Result<String> {
        guard(|| serde_json::to_string(&self.inner).map_err(json_error))
    }
}
