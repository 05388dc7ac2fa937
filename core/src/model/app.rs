//! The OAuth app: the Google Cloud "Web application" client and its consent
//! screen, as an admin registers them.
//!
//! [`OAuthApp::for_environment`] derives what Google must be told for a CRM
//! environment: the JavaScript origin (the environment URL) and the redirect
//! URI (`<environment URL>/_grid/cmds/dlg_gmailoauth.aspx`, as Dynamics uses).

use serde::{Deserialize, Serialize};

use super::secret::Secret;
use super::validate;
use crate::error::{Error, ErrorCode, Result};

/// The redirect path Dynamics 365 uses for Gmail OAuth.
pub const DEFAULT_REDIRECT_PATH: &str = "/_grid/cmds/dlg_gmailoauth.aspx";

/// Google allows at most this many test users while an app is in Testing.
pub const MAX_TEST_USERS: usize = 100;

/// Google Cloud OAuth client type. Server-side sync needs a Web client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
pub enum ApplicationType {
    /// "Web application": confidential client with a secret and redirect URIs.
    #[default]
    Web,
}

/// Who may use the app (consent screen "User type").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
pub enum UserType {
    /// Only accounts of the Google Cloud organization (Workspace). Others get `org_internal`.
    Internal,
    /// Any Google account (subject to publishing status).
    #[default]
    External,
}

/// Consent screen publishing status.
///
/// The default is `Production`, so that an app described without an audience
/// puts no restriction on who connects. Declare `Testing` with
/// [`OAuthApp::with_audience`] when the Google Cloud app is in Testing: the
/// library then admits only test users and warns about 7-day refresh tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
pub enum PublishingStatus {
    /// Only test users may consent; their refresh tokens expire after 7 days.
    Testing,
    /// Anyone allowed by the user type may consent.
    #[default]
    Production,
}

/// The OAuth consent screen settings that change what the library allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
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
pub struct ConsentScreen {
    /// Internal or External.
    pub user_type: UserType,
    /// Testing or Production.
    pub publishing_status: PublishingStatus,
    /// Test users (lower-cased), at most 100; only they may connect while
    /// the app is External + Testing.
    pub test_users: Vec<String>,
    /// Authorized domains; must include the environment's registrable domain.
    pub authorized_domains: Vec<String>,
}

impl ConsentScreen {
    /// Whether only listed test users may connect.
    pub fn is_external_testing(&self) -> bool {
        self.user_type == UserType::External && self.publishing_status == PublishingStatus::Testing
    }
}

/// A non-fatal configuration consequence the admin should know about.
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
pub struct Warning {
    /// Stable snake_case code.
    pub code: String,
    /// Explanation for people.
    pub message: String,
}

/// The registered OAuth client and its consent screen.
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
pub struct OAuthApp {
    /// Client id, e.g. `1234-abc.apps.googleusercontent.com`.
    pub client_id: String,
    /// Client secret: sealed at rest, redacted everywhere, never serialized.
    #[serde(skip)]
    pub client_secret: Option<Secret>,
    /// Always Web for server-side sync.
    pub application_type: ApplicationType,
    /// Authorized JavaScript origins.
    pub javascript_origins: Vec<String>,
    /// Authorized redirect URIs; the first is the one consent requests use.
    pub redirect_uris: Vec<String>,
    /// Consent screen settings.
    pub consent_screen: ConsentScreen,
}

impl OAuthApp {
    /// A Google Web client with its id and secret. Add origins and redirect
    /// URIs with [`OAuthApp::for_environment`] or the `with_*` methods.
    pub fn google(client_id: impl Into<String>, client_secret: impl Into<Secret>) -> Self {
        OAuthApp::web(client_id, client_secret)
    }

    /// A confidential web client of any provider, with its id and secret
    /// (the same shape as [`OAuthApp::google`]).
    pub fn web(client_id: impl Into<String>, client_secret: impl Into<Secret>) -> Self {
        OAuthApp {
            client_id: client_id.into().trim().to_owned(),
            client_secret: Some(client_secret.into()),
            application_type: ApplicationType::Web,
            javascript_origins: Vec::new(),
            redirect_uris: Vec::new(),
            consent_screen: ConsentScreen::default(),
        }
    }

    /// Derives the origin (the environment URL) and the redirect URI
    /// (environment URL + `/_grid/cmds/dlg_gmailoauth.aspx`), and adds the
    /// environment's registrable domain to the authorized domains.
    pub fn for_environment(self, environment_url: &str) -> Result<Self> {
        self.for_environment_with_path(environment_url, DEFAULT_REDIRECT_PATH)
    }

    /// Like [`OAuthApp::for_environment`] with another redirect path, for CRMs
    /// that route the callback elsewhere.
    pub fn for_environment_with_path(
        mut self,
        environment_url: &str,
        redirect_path: &str,
    ) -> Result<Self> {
        let trimmed = environment_url.trim().trim_end_matches('/');
        let origin = validate::javascript_origin("environment_url", trimmed)?;
        if !redirect_path.starts_with('/') {
            return Err(Error::validation("redirect_path", "must start with '/'"));
        }
        let origin_text = origin.origin().ascii_serialization();
        let redirect = format!("{origin_text}{redirect_path}");
        validate::redirect_uri("redirect_uris[0]", &redirect)?;
        self.javascript_origins = vec![origin_text];
        self.redirect_uris.retain(|u| u != &redirect);
        self.redirect_uris.insert(0, redirect);
        if let Some(domain) = origin.host_str().and_then(validate::registrable_domain)
            && !self.consent_screen.authorized_domains.contains(&domain)
        {
            self.consent_screen.authorized_domains.push(domain);
        }
        Ok(self)
    }

    /// Adds an authorized redirect URI (validated on [`OAuthApp::validate`]).
    pub fn with_redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uris.push(uri.into());
        self
    }

    /// Sets user type and publishing status.
    pub fn with_audience(mut self, user_type: UserType, status: PublishingStatus) -> Self {
        self.consent_screen.user_type = user_type;
        self.consent_screen.publishing_status = status;
        self
    }

    /// Adds test users (lower-cased).
    pub fn with_test_users<I, S>(mut self, users: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.consent_screen.test_users.extend(
            users
                .into_iter()
                .map(|u| u.as_ref().trim().to_ascii_lowercase()),
        );
        self
    }

    /// The redirect URI consent requests use (the first authorized one).
    pub fn redirect_uri(&self) -> Option<&str> {
        self.redirect_uris.first().map(String::as_str)
    }

    /// Checks the app against Google's rules; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.client_id.is_empty() {
            return Err(Error::validation("client_id", "is required"));
        }
        if self.client_id.len() > 1024
            || self
                .client_id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::validation(
                "client_id",
                "must be at most 1024 printable characters without spaces",
            ));
        }
        match &self.client_secret {
            Some(secret) if secret.expose().len() > 1024 => {
                return Err(Error::validation(
                    "client_secret",
                    "must be at most 1024 characters",
                ));
            }
            Some(secret) if secret.is_empty() => {
                return Err(Error::validation("client_secret", "is required"));
            }
            _ => {}
        }
        for (i, origin) in self.javascript_origins.iter().enumerate() {
            validate::javascript_origin(&format!("javascript_origins[{i}]"), origin)?;
        }
        if self.redirect_uris.is_empty() {
            return Err(Error::validation(
                "redirect_uris",
                "at least one is required (use for_environment to derive it)",
            ));
        }
        for (i, uri) in self.redirect_uris.iter().enumerate() {
            validate::redirect_uri(&format!("redirect_uris[{i}]"), uri)?;
        }
        let screen = &self.consent_screen;
        if screen.test_users.len() > MAX_TEST_USERS {
            return Err(Error::validation(
                "consent_screen.test_users",
                format!(
                    "Google allows at most {MAX_TEST_USERS} test users, got {}; publish the app instead",
                    screen.test_users.len()
                ),
            ));
        }
        for (i, user) in screen.test_users.iter().enumerate() {
            validate::email(&format!("consent_screen.test_users[{i}]"), user)?;
        }
        for origin in &self.javascript_origins {
            let Some(domain) = url::Url::parse(origin)
                .ok()
                .and_then(|u| u.host_str().and_then(validate::registrable_domain))
            else {
                continue;
            };
            if !screen
                .authorized_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&domain))
            {
                return Err(Error::validation(
                    "consent_screen.authorized_domains",
                    format!("must include '{domain}', the environment's registrable domain"),
                ));
            }
        }
        Ok(())
    }

    /// Refuses an address that may not consent: with External + Testing only
    /// listed test users can connect, so we say so before anyone is sent to Google.
    pub fn ensure_may_connect(&self, email: &str) -> Result<()> {
        let screen = &self.consent_screen;
        if screen.is_external_testing()
            && !screen
                .test_users
                .iter()
                .any(|u| u.eq_ignore_ascii_case(email))
        {
            return Err(Error::new(
                ErrorCode::NotATestUser,
                format!(
                    "'{email}' is not a test user of this OAuth app, which is External and in Testing; \
                     add it under Audience > Test users, or publish the app"
                ),
            ));
        }
        Ok(())
    }

    /// Consequences of the configuration that are not errors.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut warnings = Vec::new();
        if self.consent_screen.is_external_testing() {
            warnings.push(Warning {
                code: "testing_refresh_token_expiry".into(),
                message: "The consent screen is External and in Testing: Google expires refresh tokens \
                          7 days after consent, so mailboxes will need to reconnect weekly. Publish the app \
                          to avoid this."
                    .into(),
            });
        }
        warnings
    }
}
