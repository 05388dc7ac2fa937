//! `OAuthApp`: the Google Cloud Web OAuth client and its consent screen.

use mailsync::model;
use napi::Env;
use napi_derive::napi;

use crate::enums::{ApplicationType, PublishingStatus, UserType};
use crate::error::guard;

/// A non-fatal configuration consequence the admin should know about.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct Warning {
    /// Stable snake_case code.
    pub code: String,
    /// Explanation for people.
    pub message: String,
}

impl From<model::Warning> for Warning {
    fn from(w: model::Warning) -> Self {
        Warning {
            code: w.code,
            message: w.message,
        }
    }
}

/// The OAuth consent screen settings.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct ConsentScreen {
    /// Internal or External.
    pub user_type: UserType,
    /// Testing or Production.
    pub publishing_status: PublishingStatus,
    /// Test users (lower-cased), at most 100.
    pub test_users: Vec<String>,
    /// Authorized domains.
    pub authorized_domains: Vec<String>,
}

/// The registered OAuth client and its consent screen. Builder methods return
/// a new `OAuthApp` and leave the receiver unchanged. The client secret is
/// write-only: `hasClientSecret` says whether one is set.
#[napi]
#[derive(Clone)]
pub struct OAuthApp {
    pub(crate) inner: model::OAuthApp,
}

impl OAuthApp {
    pub(crate) fn wrap(inner: model::OAuthApp) -> Self {
        OAuthApp { inner }
    }

    fn with(&self, change: impl FnOnce(model::OAuthApp) -> model::OAuthApp) -> OAuthApp {
        OAuthApp::wrap(change(self.inner.clone()))
    }
}

#[napi]
impl OAuthApp {
    /// A Google Web client with its id and secret.
    #[napi]
    pub fn google(env: &Env, client_id: String, client_secret: String) -> napi::Result<OAuthApp> {
        guard(env, || {
            Ok(OAuthApp::wrap(model::OAuthApp::google(
                client_id,
                client_secret,
            )))
        })
    }

    /// Derives the JavaScript origin and the redirect URI
    /// (`<environmentUrl>/_grid/cmds/dlg_gmailoauth.aspx`); throws `validation`.
    #[napi]
    pub fn for_environment(&self, env: &Env, environment_url: String) -> napi::Result<OAuthApp> {
        guard(env, || {
            self.inner
                .clone()
                .for_environment(&environment_url)
                .map(OAuthApp::wrap)
        })
    }

    /// Like `forEnvironment` with another redirect path.
    #[napi]
    pub fn for_environment_with_path(
        &self,
        env: &Env,
        environment_url: String,
        redirect_path: String,
    ) -> napi::Result<OAuthApp> {
        guard(env, || {
            self.inner
                .clone()
                .for_environment_with_path(&environment_url, &redirect_path)
                .map(OAuthApp::wrap)
        })
    }

    /// Adds an authorized redirect URI (checked by `validate` and on profile creation).
    #[napi]
    pub fn with_redirect_uri(&self, env: &Env, uri: String) -> napi::Result<OAuthApp> {
        guard(env, || Ok(self.with(|app| app.with_redirect_uri(uri))))
    }

    /// Sets user type and publishing status.
    #[napi]
    pub fn with_audience(
        &self,
        env: &Env,
        user_type: UserType,
        status: PublishingStatus,
    ) -> napi::Result<OAuthApp> {
        guard(env, || {
            Ok(self.with(|app| app.with_audience(user_type.into(), status.into())))
        })
    }

    /// Adds test users (lower-cased).
    #[napi]
    pub fn with_test_users(&self, env: &Env, users: Vec<String>) -> napi::Result<OAuthApp> {
        guard(env, || Ok(self.with(|app| app.with_test_users(users))))
    }

    /// The redirect URI consent requests use (the first authorized one).
    #[napi(getter)]
    pub fn redirect_uri(&self) -> Option<String> {
        self.inner.redirect_uri().map(str::to_owned)
    }

    /// Client id.
    #[napi(getter)]
    pub fn client_id(&self) -> String {
        self.inner.client_id.clone()
    }

    /// Whether a client secret is set (the value itself is never readable).
    #[napi(getter)]
    pub fn has_client_secret(&self) -> bool {
        self.inner
            .client_secret
            .as_ref()
            .is_some_and(|s| !s.is_empty())
    }

    /// Always `web`.
    #[napi(getter)]
    pub fn application_type(&self) -> ApplicationType {
        self.inner.application_type.into()
    }

    /// Authorized JavaScript origins.
    #[napi(getter)]
    pub fn javascript_origins(&self) -> Vec<String> {
        self.inner.javascript_origins.clone()
    }

    /// Authorized redirect URIs.
    #[napi(getter)]
    pub fn redirect_uris(&self) -> Vec<String> {
        self.inner.redirect_uris.clone()
    }

    /// Consent screen settings.
    #[napi(getter)]
    pub fn consent_screen(&self) -> ConsentScreen {
        let screen = &self.inner.consent_screen;
        ConsentScreen {
            user_type: screen.user_type.into(),
            publishing_status: screen.publishing_status.into(),
            test_users: screen.test_users.clone(),
            authorized_domains: screen.authorized_domains.clone(),
        }
    }

    /// Checks the app against Google's rules; throws `validation` naming the field.
    #[napi]
    pub fn validate(&self, env: &Env) -> napi::Result<()> {
        guard(env, || self.inner.validate())
    }

    /// Throws `not_a_test_user` when the address may not consent (External + Testing).
    #[napi]
    pub fn ensure_may_connect(&self, env: &Env, email: String) -> napi::Result<()> {
        guard(env, || self.inner.ensure_may_connect(&email))
    }

    /// Consequences of the configuration that are not errors.
    #[napi]
    pub fn warnings(&self, env: &Env) -> napi::Result<Vec<Warning>> {
        guard(env, || {
            Ok(self
                .inner
                .warnings()
                .into_iter()
                .map(Warning::from)
                .collect())
        })
    }

    /// The core's JSON form (snake_case keys, no secret).
    #[napi(js_name = "toJSON", ts_return_type = "Record<string, unknown>")]
    pub fn to_json(&self, env: &Env) -> napi::Result<serde_json::Value> {
        guard(env, || crate::json(&self.inner))
    }

    /// `OAuthApp(<client id>)`; never shows the secret.
    #[napi(js_name = "toString")]
    pub fn to_display(&self) -> String {
        format!("OAuthApp({})", self.inner.client_id)
    }
}
