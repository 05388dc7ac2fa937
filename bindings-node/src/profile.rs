//! `ServerProfile`, `Authentication` and their plain-object parts.

use mailsync::model;
use napi::Env;
use napi_derive::napi;

use crate::app::OAuthApp;
use crate::enums::{IncomingProtocol, Security, ServerType, TestOutcome};
use crate::error::{guard, integer_in};
use crate::{parse_time, rfc3339};

/// A host, port and security setting. `port` must be an integer 1–65535.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port, 1–65535.
    pub port: f64,
    /// Transport security.
    pub security: Security,
}

impl Endpoint {
    pub(crate) fn to_core(&self, field: &str) -> mailsync::Result<model::Endpoint> {
        let port = integer_in(&format!("{field}.port"), self.port, 0, u32::from(u16::MAX))?;
        Ok(model::Endpoint::new(
            self.host.clone(),
            port as u16,
            self.security.into(),
        ))
    }
}

impl From<&model::Endpoint> for Endpoint {
    fn from(e: &model::Endpoint) -> Self {
        Endpoint {
            host: e.host.clone(),
            port: f64::from(e.port),
            security: e.security.into(),
        }
    }
}

/// Where incoming mail is read from.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct IncomingEndpoint {
    /// IMAP or POP3.
    pub protocol: IncomingProtocol,
    /// Host name or IP address.
    pub host: String,
    /// TCP port, 1–65535.
    pub port: f64,
    /// Transport security.
    pub security: Security,
}

impl IncomingEndpoint {
    fn to_core(&self) -> mailsync::Result<model::IncomingEndpoint> {
        let endpoint = Endpoint {
            host: self.host.clone(),
            port: self.port,
            security: self.security,
        }
        .to_core("incoming")?;
        Ok(model::IncomingEndpoint {
            protocol: self.protocol.into(),
            endpoint,
        })
    }
}

/// The profile's advanced processing options.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct ProcessingOptions {
    /// Only mail received after this instant (RFC 3339) is processed; `null` for all.
    pub process_email_received_after: Option<String>,
    /// Minimum minutes between two polls, 0–1440.
    pub min_polling_interval_minutes: f64,
    /// Maximum concurrent connections, 1–300.
    pub max_concurrent_connections: f64,
    /// Move mail that fails processing to "Undeliverable".
    pub move_failed_to_undeliverable: bool,
    /// Alert the profile owner on major events.
    pub alert_owner_on_major_events: bool,
    /// Connection timeout in seconds, 1–100.
    pub connection_timeout_secs: f64,
}

impl ProcessingOptions {
    fn to_core(&self) -> mailsync::Result<model::ProcessingOptions> {
        let small = |field: &str, value: f64| {
            integer_in(
                &format!("processing.{field}"),
                value,
                0,
                u32::from(u16::MAX),
            )
            .map(|v| v as u16)
        };
        Ok(model::ProcessingOptions {
            process_email_received_after: self
                .process_email_received_after
                .as_deref()
                .map(|t| parse_time("processing.process_email_received_after", t))
                .transpose()?,
            min_polling_interval_minutes: small(
                "min_polling_interval_minutes",
                self.min_polling_interval_minutes,
            )?,
            max_concurrent_connections: small(
                "max_concurrent_connections",
                self.max_concurrent_connections,
            )?,
            move_failed_to_undeliverable: self.move_failed_to_undeliverable,
            alert_owner_on_major_events: self.alert_owner_on_major_events,
            connection_timeout_secs: small(
                "connection_timeout_secs",
                self.connection_timeout_secs,
            )?,
        })
    }
}

impl From<&model::ProcessingOptions> for ProcessingOptions {
    fn from(p: &model::ProcessingOptions) -> Self {
        ProcessingOptions {
            process_email_received_after: p.process_email_received_after.map(rfc3339),
            min_polling_interval_minutes: f64::from(p.min_polling_interval_minutes),
            max_concurrent_connections: f64::from(p.max_concurrent_connections),
            move_failed_to_undeliverable: p.move_failed_to_undeliverable,
            alert_owner_on_major_events: p.alert_owner_on_major_events,
            connection_timeout_secs: f64::from(p.connection_timeout_secs),
        }
    }
}

/// Outcome of the last profile-level test.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct LastTestResult {
    /// Success, failure or warning.
    pub outcome: TestOutcome,
    /// When the test ran (RFC 3339).
    pub at: String,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// What happened, for people.
    pub message: String,
}

/// The kinds of `Authentication`, spelled as the core's JSON `kind`.
#[napi(string_enum = "snake_case")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthenticationKind {
    /// Gmail OAuth.
    #[napi(value = "gmail_o_auth")]
    GmailOauth,
    /// Any OAuth 2.0 / OIDC provider.
    #[napi(value = "o_auth_provider")]
    OauthProvider,
    /// One user name and password in the profile.
    CredentialsInProfile,
    /// Credentials on each mailbox.
    CredentialsPerMailbox,
}

/// How a profile's mailboxes authenticate. Passwords are write-only
/// (`hasPassword` says whether one is set).
#[napi]
#[derive(Clone)]
pub struct Authentication {
    pub(crate) inner: model::Authentication,
}

#[napi]
impl Authentication {
    /// Gmail OAuth with the app's client.
    #[napi]
    pub fn gmail_oauth(env: &Env, app: &OAuthApp) -> napi::Result<Authentication> {
        guard(env, || {
            Ok(Authentication {
                inner: model::Authentication::GmailOAuth {
                    app: app.inner.clone(),
                },
            })
        })
    }

    /// Any OAuth 2.0 / OIDC provider found through its issuer URL.
    #[napi]
    pub fn oauth_provider(
        env: &Env,
        issuer: String,
        app: &OAuthApp,
    ) -> napi::Result<Authentication> {
        guard(env, || {
            Ok(Authentication {
                inner: model::Authentication::OAuthProvider {
                    issuer,
                    app: app.inner.clone(),
                },
            })
        })
    }

    /// One user name and password stored (sealed) in the profile.
    #[napi]
    pub fn credentials_in_profile(
        env: &Env,
        username: String,
        password: String,
    ) -> napi::Result<Authentication> {
        guard(env, || {
            Ok(Authentication {
                inner: model::Authentication::CredentialsInProfile {
                    username,
                    password: Some(password.into()),
                },
            })
        })
    }

    /// Each mailbox carries its own credentials.
    #[napi]
    pub fn credentials_per_mailbox() -> Authentication {
        Authentication {
            inner: model::Authentication::CredentialsPerMailbox,
        }
    }

    /// Which kind this is.
    #[napi(getter)]
    pub fn kind(&self) -> AuthenticationKind {
        match &self.inner {
            model::Authentication::GmailOAuth { .. } => AuthenticationKind::GmailOauth,
            model::Authentication::OAuthProvider { .. } => AuthenticationKind::OauthProvider,
            model::Authentication::CredentialsInProfile { .. } => {
                AuthenticationKind::CredentialsInProfile
            }
            model::Authentication::CredentialsPerMailbox => {
                AuthenticationKind::CredentialsPerMailbox
            }
        }
    }

    /// The OAuth app, for OAuth kinds.
    #[napi(getter)]
    pub fn app(&self) -> Option<OAuthApp> {
        self.inner.oauth_app().cloned().map(OAuthApp::wrap)
    }

    /// Issuer URL (`oauth_provider` only).
    #[napi(getter)]
    pub fn issuer(&self) -> Option<String> {
        match &self.inner {
            model::Authentication::OAuthProvider { issuer, .. } => Some(issuer.clone()),
            _ => None,
        }
    }

    /// User name (`credentials_in_profile` only).
    #[napi(getter)]
    pub fn username(&self) -> Option<String> {
        match &self.inner {
            model::Authentication::CredentialsInProfile { username, .. } => Some(username.clone()),
            _ => None,
        }
    }

    /// Whether a password is set (`credentials_in_profile` only).
    #[napi(getter)]
    pub fn has_password(&self) -> bool {
        matches!(&self.inner, model::Authentication::CredentialsInProfile { password: Some(p), .. } if !p.is_empty())
    }

    /// Whether authentication uses OAuth tokens.
    #[napi(getter)]
    pub fn is_oauth(&self) -> bool {
        self.inner.is_oauth()
    }

    /// The core's JSON form (no secret).
    #[napi(js_name = "toJSON", ts_return_type = "Record<string, unknown>")]
    pub fn to_json(&self, env: &Env) -> napi::Result<serde_json::Value> {
        guard(env, || crate::json(&self.inner))
    }

    /// `Authentication(<kind>)`; never shows a secret.
    #[napi(js_name = "toString")]
    pub fn to_display(&self) -> String {
        let kind = match self.kind() {
            AuthenticationKind::GmailOauth => "gmail_o_auth",
            AuthenticationKind::OauthProvider => "o_auth_provider",
            AuthenticationKind::CredentialsInProfile => "credentials_in_profile",
            AuthenticationKind::CredentialsPerMailbox => "credentials_per_mailbox",
        };
        format!("Authentication({kind})")
    }
}

/// An email server profile. Builder methods return a new profile; setters
/// change this one (checked by `validate`, `createProfile`, `updateProfile`).
#[napi]
#[derive(Clone)]
pub struct ServerProfile {
    pub(crate) inner: model::ServerProfile,
}

impl ServerProfile {
    pub(crate) fn wrap(inner: model::ServerProfile) -> Self {
        ServerProfile { inner }
    }

    fn with(
        &self,
        change: impl FnOnce(model::ServerProfile) -> model::ServerProfile,
    ) -> ServerProfile {
        ServerProfile::wrap(change(self.inner.clone()))
    }
}

#[napi]
impl ServerProfile {
    /// A Gmail profile: Gmail OAuth, `imap.gmail.com:993` TLS, `smtp.gmail.com:587` STARTTLS, capacity 100.
    #[napi]
    pub fn gmail(env: &Env, name: String, app: &OAuthApp) -> napi::Result<ServerProfile> {
        guard(env, || {
            Ok(ServerProfile::wrap(model::ServerProfile::gmail(
                name,
                app.inner.clone(),
            )))
        })
    }

    /// A profile for any IMAP or POP3 server plus SMTP.
    #[napi]
    pub fn generic(
        env: &Env,
        name: String,
        incoming: IncomingEndpoint,
        outgoing: Endpoint,
        authentication: &Authentication,
    ) -> napi::Result<ServerProfile> {
        guard(env, || {
            let incoming = incoming.to_core()?;
            let outgoing = outgoing.to_core("outgoing")?;
            Ok(ServerProfile::wrap(model::ServerProfile::generic(
                name,
                incoming,
                outgoing,
                authentication.inner.clone(),
            )))
        })
    }

    /// Read incoming mail over POP3 (`pop.gmail.com:995` TLS for Gmail).
    #[napi]
    pub fn use_pop3(&self, env: &Env) -> napi::Result<ServerProfile> {
        guard(env, || Ok(self.with(model::ServerProfile::use_pop3)))
    }

    /// Send over implicit TLS on port 465 instead of STARTTLS on 587.
    #[napi]
    pub fn use_smtp_tls465(&self, env: &Env) -> napi::Result<ServerProfile> {
        guard(
            env,
            || Ok(self.with(model::ServerProfile::use_smtp_tls_465)),
        )
    }

    /// Core `default_for_new_mailboxes()`: a copy marked as the default for new
    /// mailboxes (renamed because `defaultForNewMailboxes` is the property).
    #[napi]
    pub fn as_default_for_new_mailboxes(&self, env: &Env) -> napi::Result<ServerProfile> {
        guard(env, || {
            Ok(self.with(model::ServerProfile::default_for_new_mailboxes))
        })
    }

    /// Point the incoming side somewhere else.
    #[napi]
    pub fn with_incoming(&self, env: &Env, endpoint: Endpoint) -> napi::Result<ServerProfile> {
        guard(env, || {
            let endpoint = endpoint.to_core("incoming")?;
            Ok(self.with(|p| p.with_incoming(endpoint)))
        })
    }

    /// Point the outgoing side somewhere else.
    #[napi]
    pub fn with_outgoing(&self, env: &Env, endpoint: Endpoint) -> napi::Result<ServerProfile> {
        guard(env, || {
            let endpoint = endpoint.to_core("outgoing")?;
            Ok(self.with(|p| p.with_outgoing(endpoint)))
        })
    }

    /// Cap the mailboxes below the maximum.
    #[napi]
    pub fn with_mailbox_capacity(&self, env: &Env, capacity: f64) -> napi::Result<ServerProfile> {
        guard(env, || {
            let capacity = integer_in("mailbox_capacity", capacity, 0, u32::MAX)?;
            Ok(self.with(|p| p.with_mailbox_capacity(capacity)))
        })
    }

    /// Checks every field; throws `validation` naming the first field at fault.
    #[napi]
    pub fn validate(&self, env: &Env) -> napi::Result<()> {
        guard(env, || self.inner.validate())
    }

    /// Stable id (a UUID).
    #[napi(getter)]
    pub fn id(&self) -> String {
        self.inner.id.to_string()
    }

    /// Unique display name.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.inner.name.clone()
    }

    #[napi(setter, js_name = "name")]
    pub fn set_name(&mut self, name: String) {
        self.inner.name = name;
    }

    /// Server type.
    #[napi(getter)]
    pub fn server_type(&self) -> ServerType {
        self.inner.server_type.into()
    }

    /// How mailboxes authenticate.
    #[napi(getter)]
    pub fn authentication(&self) -> Authentication {
        Authentication {
            inner: self.inner.authentication.clone(),
        }
    }

    #[napi(setter, js_name = "authentication")]
    pub fn set_authentication(&mut self, authentication: &Authentication) {
        self.inner.authentication = authentication.inner.clone();
    }

    /// The OAuth app, if the profile authenticates with OAuth.
    #[napi(getter)]
    pub fn oauth_app(&self) -> Option<OAuthApp> {
        self.inner.oauth_app().cloned().map(OAuthApp::wrap)
    }

    /// Whether the profile holds a client secret (OAuth) or password (credentials in profile).
    #[napi(getter)]
    pub fn has_client_secret(&self) -> bool {
        match &self.inner.authentication {
            model::Authentication::GmailOAuth { app }
            | model::Authentication::OAuthProvider { app, .. } => {
                app.client_secret.as_ref().is_some_and(|s| !s.is_empty())
            }
            _ => false,
        }
    }

    /// Incoming server.
    #[napi(getter)]
    pub fn incoming(&self) -> IncomingEndpoint {
        let incoming = &self.inner.incoming;
        IncomingEndpoint {
            protocol: incoming.protocol.into(),
            host: incoming.endpoint.host.clone(),
            port: f64::from(incoming.endpoint.port),
            security: incoming.endpoint.security.into(),
        }
    }

    #[napi(setter, js_name = "incoming")]
    pub fn set_incoming(&mut self, env: &Env, incoming: IncomingEndpoint) -> napi::Result<()> {
        let incoming = guard(env, || incoming.to_core())?;
        self.inner.incoming = incoming;
        Ok(())
    }

    /// Outgoing (SMTP) server.
    #[napi(getter)]
    pub fn outgoing(&self) -> Endpoint {
        Endpoint::from(&self.inner.outgoing)
    }

    #[napi(setter, js_name = "outgoing")]
    pub fn set_outgoing(&mut self, env: &Env, outgoing: Endpoint) -> napi::Result<()> {
        let outgoing = guard(env, || outgoing.to_core("outgoing"))?;
        self.inner.outgoing = outgoing;
        Ok(())
    }

    /// Use the incoming credentials for outgoing connections too.
    #[napi(getter)]
    pub fn use_same_settings_for_outgoing(&self) -> bool {
        self.inner.use_same_settings_for_outgoing
    }

    #[napi(setter, js_name = "useSameSettingsForOutgoing")]
    pub fn set_use_same_settings_for_outgoing(&mut self, value: bool) {
        self.inner.use_same_settings_for_outgoing = value;
    }

    /// Advanced processing options.
    #[napi(getter)]
    pub fn processing(&self) -> ProcessingOptions {
        ProcessingOptions::from(&self.inner.processing)
    }

    #[napi(setter, js_name = "processing")]
    pub fn set_processing(&mut self, env: &Env, processing: ProcessingOptions) -> napi::Result<()> {
        let processing = guard(env, || processing.to_core())?;
        self.inner.processing = processing;
        Ok(())
    }

    /// New mailboxes get this profile unless another is named.
    #[napi(getter)]
    pub fn default_for_new_mailboxes(&self) -> bool {
        self.inner.default_for_new_mailboxes
    }

    #[napi(setter, js_name = "defaultForNewMailboxes")]
    pub fn set_default_for_new_mailboxes(&mut self, value: bool) {
        self.inner.default_for_new_mailboxes = value;
    }

    /// Mailboxes this profile may hold (at most 100 for OAuth profiles).
    #[napi(getter)]
    pub fn mailbox_capacity(&self) -> f64 {
        f64::from(self.inner.mailbox_capacity)
    }

    #[napi(setter, js_name = "mailboxCapacity")]
    pub fn set_mailbox_capacity(&mut self, env: &Env, value: f64) -> napi::Result<()> {
        let capacity = guard(env, || integer_in("mailbox_capacity", value, 0, u32::MAX))?;
        self.inner.mailbox_capacity = capacity;
        Ok(())
    }

    /// Allow plaintext endpoints on loopback hosts.
    #[napi(getter)]
    pub fn allow_plaintext_on_loopback(&self) -> bool {
        self.inner.allow_plaintext_on_loopback
    }

    #[napi(setter, js_name = "allowPlaintextOnLoopback")]
    pub fn set_allow_plaintext_on_loopback(&mut self, value: bool) {
        self.inner.allow_plaintext_on_loopback = value;
    }

    /// Last profile-level test, if any.
    #[napi(getter)]
    pub fn last_test(&self) -> Option<LastTestResult> {
        self.inner.last_test.as_ref().map(|t| LastTestResult {
            outcome: t.outcome.into(),
            at: rfc3339(t.at),
            duration_ms: t.duration_ms as f64,
            message: t.message.clone(),
        })
    }

    /// The core's JSON form (snake_case keys, no secret).
    #[napi(js_name = "toJSON", ts_return_type = "Record<string, unknown>")]
    pub fn to_json(&self, env: &Env) -> napi::Result<serde_json::Value> {
        guard(env, || crate::json(&self.inner))
    }

    /// `ServerProfile(<name>, <id>)`; never shows a secret.
    #[napi(js_name = "toString")]
    pub fn to_display(&self) -> String {
        format!("ServerProfile({}, {})", self.inner.name, self.inner.id)
    }
}
