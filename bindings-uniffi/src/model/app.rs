//! `OAuthApp`, its consent screen and warnings.

use std::sync::Arc;

use mailsync::model as core;

use crate::convert::mirror_enum;
use crate::error::{Result, guard, guard_ok};

mirror_enum! {
    /// Google Cloud OAuth client type (server-side sync needs a Web client).
    ApplicationType => core::ApplicationType { /// "Web application".
        Web }
}

mirror_enum! {
    /// Consent screen "User type".
    UserType => core::UserType {
        /// Only accounts of the Google Cloud organization.
        Internal,
        /// Any Google account (subject to publishing status).
        External,
    }
}

mirror_enum! {
    /// Consent screen publishing status.
    PublishingStatus => core::PublishingStatus {
        /// Only test users may consent; refresh tokens expire after 7 days.
        Testing,
        /// Anyone allowed by the user type may consent.
        Production,
    }
}

/// The OAuth consent screen settings that change what the library allows.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConsentScreen {
    /// Internal or External.
    pub user_type: UserType,
    /// Testing or Production.
    pub publishing_status: PublishingStatus,
    /// Test users (lower-cased), at most 100.
    pub test_users: Vec<String>,
    /// Authorized domains; must include the environment's registrable domain.
    pub authorized_domains: Vec<String>,
}

impl From<core::ConsentScreen> for ConsentScreen {
    fn from(c: core::ConsentScreen) -> Self {
        ConsentScreen {
            user_type: c.user_type.into(),
            publishing_status: c.publishing_status.into(),
            test_users: c.test_users,
            authorized_domains: c.authorized_domains,
        }
    }
}

impl From<ConsentScreen> for core::ConsentScreen {
    fn from(c: ConsentScreen) -> Self {
        core::ConsentScreen {
            user_type: c.user_type.into(),
            publishing_status: c.publishing_status.into(),
            test_users: c.test_users,
            authorized_domains: c.authorized_domains,
        }
    }
}

/// A non-fatal configuration consequence the admin should know about.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Warning {
    /// Stable snake_case code.
    pub code: String,
    /// Explanation for people.
    pub message: String,
}

impl From<core::Warning> for Warning {
    fn from(w: core::Warning) -> Self {
        Warning {
            code: w.code,
            message: w.message,
        }
    }
}

/// The registered OAuth client (Google "Web application") and its consent
/// screen. Immutable: every `with…`/`for…` method returns a new app.
///
/// The client secret is given once, to `google(...)`, and is never readable
/// from the host: `hasClientSecret()` says whether one is set, `toString()`
/// and `toJson()` never contain it.
#[derive(uniffi::Object)]
#[uniffi::export(Debug)]
pub struct OAuthApp {
    pub(crate) inner: core::OAuthApp,
}

impl std::fmt::Debug for OAuthApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl OAuthApp {
    pub(crate) fn wrap(inner: core::OAuthApp) -> Arc<OAuthApp> {
        Arc::new(OAuthApp { inner })
    }

    fn map(
        &self,
        f: impl FnOnce(core::OAuthApp) -> mailsync::Result<core::OAuthApp>,
    ) -> Result<Arc<OAuthApp>> {
        let app = self.inner.clone();
        guard(|| f(app).map(OAuthApp::wrap))
    }
}

#[uniffi::export]
impl OAuthApp {
    /// A Google Web client with its id and secret.
    #[uniffi::constructor]
    pub fn google(client_id: String, client_secret: String) -> Result<Arc<OAuthApp>> {
        guard_ok(|| OAuthApp::wrap(core::OAuthApp::google(client_id, client_secret)))
    }

    /// Derives the JavaScript origin (the environment URL) and the redirect
    /// URI (`<url>/_grid/cmds/dlg_gmailoauth.aspx`); adds the registrable domain.
    pub fn for_environment(&self, environment_url: String) -> Result<Arc<OAuthApp>> {
        self.map(|app| app.for_environment(&environment_url))
    }

    /// Like `for_environment` with another redirect path.
    pub fn for_environment_with_path(
        &self,
        environment_url: String,
        redirect_path: String,
    ) -> Result<Arc<OAuthApp>> {
        self.map(|app| app.for_environment_with_path(&environment_url, &redirect_path))
    }

    /// Adds an authorized redirect URI (checked by `validate` and on create).
    pub fn with_redirect_uri(&self, uri: String) -> Result<Arc<OAuthApp>> {
        self.map(|app| Ok(app.with_redirect_uri(uri)))
    }

    /// Sets user type and publishing status.
    pub fn with_audience(
        &self,
        user_type: UserType,
        publishing_status: PublishingStatus,
    ) -> Result<Arc<OAuthApp>> {
        self.map(|app| Ok(app.with_audience(user_type.into(), publishing_status.into())))
    }

    /// Adds test users (lower-cased).
    pub fn with_test_users(&self, users: Vec<String>) -> Result<Arc<OAuthApp>> {
        self.map(|app| Ok(app.with_test_users(users)))
    }

    /// Replaces the consent screen settings.
    pub fn with_consent_screen(&self, consent_screen: ConsentScreen) -> Result<Arc<OAuthApp>> {
        self.map(|mut app| {
            app.consent_screen = consent_screen.into();
            Ok(app)
        })
    }

    /// The redirect URI consent requests use (the first authorized one).
    pub fn redirect_uri(&self) -> Option<String> {
        self.inner.redirect_uri().map(str::to_owned)
    }

    /// Checks the app against Google's rules; a `validation` error names the field.
    pub fn validate(&self) -> Result<()> {
        guard(|| self.inner.validate())
    }

    /// Fails with `not_a_test_user` when the app is External + Testing and
    /// `email` is not a test user.
    pub fn ensure_may_connect(&self, email: String) -> Result<()> {
        guard(|| self.inner.ensure_may_connect(&email))
    }

    /// Consequences of the configuration that are not errors.
    pub fn warnings(&self) -> Vec<Warning> {
        self.inner
            .warnings()
            .into_iter()
            .map(Warning::from)
            .collect()
    }

    /// Client id.
    pub fn client_id(&self) -> String {
        self.inner.client_id.clone()
    }

    /// Whether a client secret is set (its value is never exposed).
    pub fn has_client_secret(&self) -> bool {
        self.inner
            .client_secret
            .as_ref()
            .is_some_and(|s| !s.is_empty())
    }

    /// Always `WEB`.
    pub fn application_type(&self) -> ApplicationType {
        self.inner.application_type.into()
    }

    /// Authorized JavaScript origins.
    pub fn javascript_origins(&self) -> Vec<String> {
        self.inner.javascript_origins.clone()
    }

    /// Authorized redirect URIs; the first is the one consent requests use.
    pub fn redirect_uris(&self) -> Vec<String> {
        self.inner.redirect_uris.clone()
    }

    /// Consent screen settings.
    pub fn consent_screen(&self) -> ConsentScreen {
        self.inner.consent_screen.clone().into()
    }

    /// The core's JSON form (never contains the secret).
    pub fn to_json(&self) -> Result<String> {
        guard(|| serde_json::to_string(&self.inner).map_err(json_error))
    }
}

pub(crate) fn json_error(e: serde_json::Error) -> mailsync::Error {
    mailsync::Error::new(
        mailsync::ErrorCode::Internal,
        format!("cannot encode record: {e}"),
    )
}
