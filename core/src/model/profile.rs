//! Email server profile: where and how a group of mailboxes connects.
//!
//! Mirrors the Dynamics 365 `emailserverprofile` record:
//! server type, authentication, incoming/outgoing endpoints, advanced
//! processing options, "default profile for new mailboxes" and the last test
//! results. [`ServerProfile::gmail`] fills everything the way the Gmail
//! procedure does.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::app::OAuthApp;
use super::secret::Secret;
use super::validate;
use super::{ProfileId, TestOutcome, Timestamp};
use crate::error::{Error, Result};

/// Google's mail servers: the only hosts Gmail OAuth tokens are sent to
/// (unless the test issuer override is set, see [`crate::Options`]).
pub const GOOGLE_MAIL_HOSTS: &[&str] = &["imap.gmail.com", "pop.gmail.com", "smtp.gmail.com"];

/// Google's documented ceiling of users per Gmail OAuth profile.
pub const GMAIL_OAUTH_MAX_MAILBOXES: u32 = 100;

/// What kind of server the profile talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum ServerType {
    /// Gmail (IMAP or POP in, SMTP out, Gmail OAuth).
    Gmail,
    /// Any IMAP server with SMTP for outgoing mail.
    ImapSmtp,
    /// Any POP3 server with SMTP for outgoing mail.
    Pop3Smtp,
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
pub enum Security {
    /// TLS from the first byte (IMAP 993, POP3 995, SMTP 465).
    Tls,
    /// Plain connection upgraded with STARTTLS/STLS (SMTP 587).
    StartTls,
    /// No encryption. Allowed only for loopback hosts, and only when the
    /// profile sets `allow_plaintext_on_loopback`.
    Plaintext,
}

/// Protocol used for incoming mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "lowercase"))]
pub enum IncomingProtocol {
    /// IMAP4rev1 (INBOX only, like Dynamics).
    Imap,
    /// POP3.
    Pop3,
}

/// A host, port and security setting.
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
pub struct Endpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port, 1–65535.
    pub port: u16,
    /// Transport security.
    pub security: Security,
}

impl Endpoint {
    /// A new endpoint.
    pub fn new(host: impl Into<String>, port: u16, security: Security) -> Self {
        Endpoint {
            host: host.into(),
            port,
            security,
        }
    }

    /// Whether the host is `localhost` or a loopback address.
    pub fn is_loopback(&self) -> bool {
        validate::is_loopback_host(&self.host)
    }

    fn validate(&self, field: &str, allow_plaintext: bool) -> Result<()> {
        validate::host(&format!("{field}.host"), &self.host)?;
        if self.port == 0 {
            return Err(Error::validation(
                format!("{field}.port"),
                "must be between 1 and 65535",
            ));
        }
        if self.security == Security::Plaintext && !(allow_plaintext && self.is_loopback()) {
            return Err(Error::validation(
                format!("{field}.security"),
                "plaintext is allowed only for a loopback host when the profile allows it explicitly",
            ));
        }
        Ok(())
    }
}

/// Where incoming mail is read from.
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
pub struct IncomingEndpoint {
    /// IMAP or POP3.
    pub protocol: IncomingProtocol,
    /// Host, port, security.
    #[serde(flatten)]
    pub endpoint: Endpoint,
}

/// How the profile's mailboxes authenticate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
pub enum Authentication {
    /// Gmail OAuth (Dynamics value 5): Google's endpoints, the app's client.
    #[serde(rename = "gmail_oauth", alias = "gmail_o_auth")]
    GmailOAuth {
        /// The Google Cloud OAuth client and its consent screen.
        app: OAuthApp,
    },
    /// Any OAuth 2.0 / OIDC provider that supports XOAUTH2 or OAUTHBEARER,
    /// found through its issuer's metadata (OpenID Connect discovery, or
    /// RFC 8414 authorization server metadata).
    #[serde(rename = "oauth_provider", alias = "o_auth_provider")]
    OAuthProvider {
        /// Issuer URL (`/.well-known/openid-configuration` is read from it).
        issuer: String,
        /// The registered client.
        app: OAuthApp,
        /// The scopes that give IMAP/POP/SMTP access; all must be granted.
        /// Empty means the known default for the issuer (Google, Microsoft
        /// 365); an issuer without a known default must name them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mail_scopes: Vec<String>,
    },
    /// One user name and password stored in the profile (Dynamics value 1).
    CredentialsInProfile {
        /// User name.
        username: String,
        /// Password (sealed at rest, never serialized).
        #[serde(skip)]
        password: Option<Secret>,
    },
    /// Each mailbox carries its own user name and password (Dynamics value 0).
    CredentialsPerMailbox {},
}

impl Authentication {
    /// The OAuth app, for OAuth authentication kinds.
    pub fn oauth_app(&self) -> Option<&OAuthApp> {
        match self {
            Authentication::GmailOAuth { app } | Authentication::OAuthProvider { app, .. } => {
                Some(app)
            }
            _ => None,
        }
    }

    /// Mutable access to the OAuth app.
    pub fn oauth_app_mut(&mut self) -> Option<&mut OAuthApp> {
        match self {
            Authentication::GmailOAuth { app } | Authentication::OAuthProvider { app, .. } => {
                Some(app)
            }
            _ => None,
        }
    }

    /// Whether authentication uses OAuth tokens (XOAUTH2/OAUTHBEARER).
    pub fn is_oauth(&self) -> bool {
        self.oauth_app().is_some()
    }

    /// The mail scopes consent asks for: Gmail's for Gmail OAuth, the
    /// profile's own or the issuer's known default for other providers.
    /// `None` for password authentication, or when none can be determined.
    pub fn mail_scopes(&self) -> Option<Vec<String>> {
        match self {
            Authentication::GmailOAuth { .. } => {
                Some(vec![crate::oauth::provider::GMAIL_SCOPE.to_owned()])
            }
            Authentication::OAuthProvider {
                issuer,
                mail_scopes,
                ..
            } => {
                if mail_scopes.is_empty() {
                    crate::oauth::provider::default_mail_scopes(issuer)
                } else {
                    Some(mail_scopes.clone())
                }
            }
            _ => None,
        }
    }
}

/// The profile's "Advanced" options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
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
pub struct ProcessingOptions {
    /// Only mail received after this instant is processed.
    pub process_email_received_after: Option<Timestamp>,
    /// Minimum minutes between two polls of a mailbox, 0–1440.
    pub min_polling_interval_minutes: u16,
    /// Maximum concurrent connections, 1–300.
    pub max_concurrent_connections: u16,
    /// Move mail that fails processing to an "Undeliverable" folder.
    pub move_failed_to_undeliverable: bool,
    /// Alert the profile owner on major events (>50% of mailboxes failing in an hour).
    pub alert_owner_on_major_events: bool,
    /// Connection timeout in seconds (1–100), applied to every network step.
    pub connection_timeout_secs: u16,
}

impl Default for ProcessingOptions {
    fn default() -> Self {
        ProcessingOptions {
            process_email_received_after: None,
            // Dynamics' default is unconfirmed; 5 minutes matches its sync cadence.
            min_polling_interval_minutes: 5,
            max_concurrent_connections: 10,
            move_failed_to_undeliverable: false,
            alert_owner_on_major_events: false,
            connection_timeout_secs: 60,
        }
    }
}

impl ProcessingOptions {
    /// The connection timeout as a duration.
    pub fn connection_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.connection_timeout_secs))
    }

    fn validate(&self) -> Result<()> {
        if self.min_polling_interval_minutes > 1440 {
            return Err(Error::validation(
                "processing.min_polling_interval_minutes",
                "must be between 0 and 1440",
            ));
        }
        if !(1..=300).contains(&self.max_concurrent_connections) {
            return Err(Error::validation(
                "processing.max_concurrent_connections",
                "must be between 1 and 300",
            ));
        }
        if !(1..=100).contains(&self.connection_timeout_secs) {
            return Err(Error::validation(
                "processing.connection_timeout_secs",
                "must be between 1 and 100 seconds",
            ));
        }
        Ok(())
    }
}

/// Outcome of the last profile-level test (Dynamics `lasttestexecutionstatus`).
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
pub struct LastTestResult {
    /// Success, Failure or Warning.
    pub outcome: TestOutcome,
    /// When the test ran.
    pub at: Timestamp,
    /// How long it took, in milliseconds.
    pub duration_ms: u32,
    /// What happened, for people.
    pub message: String,
}

fn default_true() -> bool {
    true
}

fn default_capacity() -> u32 {
    GMAIL_OAUTH_MAX_MAILBOXES
}

/// An email server profile.
///
/// In JSON, `id` may be left out (a new one is assigned), as may the flags
/// (`false`; `use_same_settings_for_outgoing`: `true`), `mailbox_capacity`
/// (100), `processing` (the defaults) and `version`.
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
pub struct ServerProfile {
    /// Stable id, assigned on creation.
    #[serde(default)]
    pub id: ProfileId,
    /// Unique display name, 1–100 characters.
    pub name: String,
    /// Server type.
    pub server_type: ServerType,
    /// How mailboxes authenticate.
    pub authentication: Authentication,
    /// Incoming server.
    pub incoming: IncomingEndpoint,
    /// Outgoing (SMTP) server.
    pub outgoing: Endpoint,
    /// Use the incoming credentials for outgoing connections too (default yes).
    #[serde(default = "default_true")]
    pub use_same_settings_for_outgoing: bool,
    /// Advanced options.
    #[serde(default)]
    pub processing: ProcessingOptions,
    /// New mailboxes get this profile unless another is named.
    #[serde(default)]
    pub default_for_new_mailboxes: bool,
    /// Mailboxes this profile may hold; at most 100 for OAuth profiles.
    #[serde(default = "default_capacity")]
    pub mailbox_capacity: u32,
    /// Allow [`Security::Plaintext`] endpoints on loopback hosts (tests, local relays).
    #[serde(default)]
    pub allow_plaintext_on_loopback: bool,
    /// Write version for optimistic concurrency: an update must carry the
    /// version it was read at (set by the store; only grows).
    #[serde(default)]
    pub version: i64,
}

/// The form in which profile names are compared: surrounding spaces
/// removed, Unicode lower case. `"Sales"` and `" SALES "` are one name.
pub fn profile_name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

impl ServerProfile {
    /// Removes surrounding spaces from the name (names are stored trimmed).
    pub fn normalize(&mut self) {
        let trimmed = self.name.trim();
        if trimmed.len() != self.name.len() {
            self.name = trimmed.to_owned();
        }
    }

    /// A Gmail profile with Gmail OAuth, IMAP `imap.gmail.com:993` TLS and
    /// SMTP `smtp.gmail.com:587` STARTTLS, capacity 100.
    pub fn gmail(name: impl Into<String>, app: OAuthApp) -> Self {
        ServerProfile {
            id: ProfileId::new(),
            name: name.into(),
            server_type: ServerType::Gmail,
            authentication: Authentication::GmailOAuth { app },
            incoming: IncomingEndpoint {
                protocol: IncomingProtocol::Imap,
                endpoint: Endpoint::new("imap.gmail.com", 993, Security::Tls),
            },
            outgoing: Endpoint::new("smtp.gmail.com", 587, Security::StartTls),
            use_same_settings_for_outgoing: true,
            processing: ProcessingOptions::default(),
            default_for_new_mailboxes: false,
            mailbox_capacity: GMAIL_OAUTH_MAX_MAILBOXES,
            allow_plaintext_on_loopback: false,
            version: 0,
        }
    }

    /// A generic profile for any IMAP or POP3 server plus SMTP.
    pub fn generic(
        name: impl Into<String>,
        incoming: IncomingEndpoint,
        outgoing: Endpoint,
        authentication: Authentication,
    ) -> Self {
        let server_type = match incoming.protocol {
            IncomingProtocol::Imap => ServerType::ImapSmtp,
            IncomingProtocol::Pop3 => ServerType::Pop3Smtp,
        };
        let mailbox_capacity = if authentication.is_oauth() {
            GMAIL_OAUTH_MAX_MAILBOXES
        } else {
            u32::MAX
        };
        ServerProfile {
            id: ProfileId::new(),
            name: name.into(),
            server_type,
            authentication,
            incoming,
            outgoing,
            use_same_settings_for_outgoing: true,
            processing: ProcessingOptions::default(),
            default_for_new_mailboxes: false,
            mailbox_capacity,
            allow_plaintext_on_loopback: false,
            version: 0,
        }
    }

    /// Read incoming mail over POP3 (`pop.gmail.com:995` TLS for Gmail).
    pub fn use_pop3(mut self) -> Self {
        self.incoming.protocol = IncomingProtocol::Pop3;
        if self.server_type == ServerType::Gmail {
            self.incoming.endpoint = Endpoint::new("pop.gmail.com", 995, Security::Tls);
        } else {
            self.server_type = ServerType::Pop3Smtp;
        }
        self
    }

    /// Send over implicit TLS on port 465 instead of STARTTLS on 587.
    pub fn use_smtp_tls_465(mut self) -> Self {
        self.outgoing.port = 465;
        self.outgoing.security = Security::Tls;
        self
    }

    /// Mark as the default profile for new mailboxes.
    pub fn default_for_new_mailboxes(mut self) -> Self {
        self.default_for_new_mailboxes = true;
        self
    }

    /// Point the incoming side somewhere else (e.g. a local test server).
    pub fn with_incoming(mut self, endpoint: Endpoint) -> Self {
        self.incoming.endpoint = endpoint;
        self
    }

    /// Point the outgoing side somewhere else.
    pub fn with_outgoing(mut self, endpoint: Endpoint) -> Self {
        self.outgoing = endpoint;
        self
    }

    /// Cap the mailboxes below the maximum.
    pub fn with_mailbox_capacity(mut self, capacity: u32) -> Self {
        self.mailbox_capacity = capacity;
        self
    }

    /// The OAuth app, if the profile authenticates with OAuth.
    pub fn oauth_app(&self) -> Option<&OAuthApp> {
        self.authentication.oauth_app()
    }

    /// For Gmail OAuth profiles: refuses (`host_not_allowed`) mail hosts
    /// outside Google's, so that Google access tokens go to Google only.
    pub fn check_google_mail_hosts(&self) -> Result<()> {
        if !matches!(self.authentication, Authentication::GmailOAuth { .. }) {
            return Ok(());
        }
        for (field, host) in [
            ("incoming.host", &self.incoming.endpoint.host),
            ("outgoing.host", &self.outgoing.host),
        ] {
            let normalized = host.trim().trim_end_matches('.').to_ascii_lowercase();
            if !GOOGLE_MAIL_HOSTS.contains(&normalized.as_str()) {
                let mut err = Error::new(
                    crate::ErrorCode::HostNotAllowed,
                    format!(
                        "{field}: Gmail OAuth profile '{}' names the mail host '{host}'; Google access tokens are \
                         sent only to {}",
                        self.name,
                        GOOGLE_MAIL_HOSTS.join(", ")
                    ),
                );
                err.set_field(field);
                return Err(err);
            }
        }
        Ok(())
    }

    /// Checks every field; the error names the first field at fault.
    pub fn validate(&self) -> Result<()> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(Error::validation("name", "is required"));
        }
        if self.name.chars().count() > 100 {
            return Err(Error::validation("name", "must be at most 100 characters"));
        }
        if self.server_type == ServerType::Gmail
            && !matches!(self.authentication, Authentication::GmailOAuth { .. })
            && !matches!(
                self.authentication,
                Authentication::CredentialsPerMailbox {}
            )
            && !matches!(
                self.authentication,
                Authentication::CredentialsInProfile { .. }
            )
        {
            return Err(Error::validation(
                "authentication",
                "a Gmail profile uses Gmail OAuth or credentials (app passwords)",
            ));
        }
        match &self.authentication {
            Authentication::GmailOAuth { app } => app.validate()?,
            Authentication::OAuthProvider {
                issuer,
                app,
                mail_scopes,
            } => {
                validate::issuer_url("authentication.issuer", issuer)?;
                app.validate()?;
                for (i, scope) in mail_scopes.iter().enumerate() {
                    if scope.is_empty()
                        || scope.len() > 512
                        || scope
                            .chars()
                            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
                    {
                        return Err(Error::validation(
                            format!("authentication.mail_scopes[{i}]"),
                            "must be one scope token (RFC 6749 §3.3): printable, without spaces",
                        ));
                    }
                }
                if self.authentication.mail_scopes().is_none() {
                    return Err(Error::validation(
                        "authentication.mail_scopes",
                        format!(
                            "no default mail scope is known for issuer {issuer}; name the scopes that grant IMAP/POP/SMTP access"
                        ),
                    ));
                }
            }
            Authentication::CredentialsInProfile { username, .. } => {
                if username.trim().is_empty() {
                    return Err(Error::validation("authentication.username", "is required"));
                }
            }
            Authentication::CredentialsPerMailbox {} => {}
        }
        self.incoming
            .endpoint
            .validate("incoming", self.allow_plaintext_on_loopback)?;
        self.outgoing
            .validate("outgoing", self.allow_plaintext_on_loopback)?;
        self.processing.validate()?;
        if self.mailbox_capacity == 0 {
            return Err(Error::validation("mailbox_capacity", "must be at least 1"));
        }
        if self.authentication.is_oauth() && self.mailbox_capacity > GMAIL_OAUTH_MAX_MAILBOXES {
            return Err(Error::validation(
                "mailbox_capacity",
                "an OAuth profile serves at most 100 mailboxes; create another profile for more",
            ));
        }
        Ok(())
    }
}
