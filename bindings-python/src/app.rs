//! `OAuthApp`, `ConsentScreen` and `Warning` (core `model::app`).

use mailsync::model;
use pyo3::prelude::*;

use crate::convert::{enum_str, parse_enum, py_str_repr, to_dict, to_json};
use crate::errors::guard;

/// The registered Google Cloud OAuth client ("Web application") and its
/// consent screen. Immutable: the `with_*`/`for_environment*` methods return
/// a new app. The client secret is write-only: it is never returned, printed
/// or serialized; `has_client_secret` tells whether one is set.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct OAuthApp {
    pub inner: model::OAuthApp,
}

#[pymethods]
impl OAuthApp {
    /// A Google Web client with its id and secret. Add origins and redirect
    /// URIs with `for_environment` or the `with_*` methods.
    #[staticmethod]
    fn google(client_id: &str, client_secret: &str) -> PyResult<OAuthApp> {
        guard(|| {
            Ok(OAuthApp {
                inner: model::OAuthApp::google(client_id, client_secret),
            })
        })
    }

    /// Derives the JavaScript origin (the environment URL) and the redirect
    /// URI (environment URL + `/_grid/cmds/dlg_gmailoauth.aspx`) and adds
    /// the environment's registrable domain to the authorized domains.
    /// Raises ValidationError (field `environment_url`) for a non-https URL.
    fn for_environment(&self, environment_url: &str) -> PyResult<OAuthApp> {
        guard(|| {
            Ok(OAuthApp {
                inner: self.inner.clone().for_environment(environment_url)?,
            })
        })
    }

    /// Like `for_environment` with another redirect path (must start with '/').
    fn for_environment_with_path(
        &self,
        environment_url: &str,
        redirect_path: &str,
    ) -> PyResult<OAuthApp> {
        guard(|| {
            Ok(OAuthApp {
                inner: self
                    .inner
                    .clone()
                    .for_environment_with_path(environment_url, redirect_path)?,
            })
        })
    }

    /// Adds an authorized redirect URI (checked by `validate` and when a
    /// profile using the app is created).
    fn with_redirect_uri(&self, uri: &str) -> PyResult<OAuthApp> {
        guard(|| {
            Ok(OAuthApp {
                inner: self.inner.clone().with_redirect_uri(uri),
            })
        })
    }

    /// Sets the consent screen's user type ("internal" | "external") and
    /// publishing status ("testing" | "production").
    fn with_audience(&self, user_type: &str, publishing_status: &str) -> PyResult<OAuthApp> {
        guard(|| {
            let user_type = parse_enum("user_type", user_type)?;
            let status = parse_enum("publishing_status", publishing_status)?;
            Ok(OAuthApp {
                inner: self.inner.clone().with_audience(user_type, status),
            })
        })
    }

    /// Adds test users (lower-cased); only they may connect while the app
    /// is External + Testing.
    fn with_test_users(&self, users: Vec<String>) -> PyResult<OAuthApp> {
        guard(|| {
            Ok(OAuthApp {
                inner: self.inner.clone().with_test_users(users),
            })
        })
    }

    /// Checks the app against Google's rules; raises ValidationError naming
    /// the field.
    fn validate(&self) -> PyResult<()> {
        guard(|| self.inner.validate())
    }

    /// Raises NotATestUserError when the app is External + Testing and
    /// `email` is not a test user.
    fn ensure_may_connect(&self, email: &str) -> PyResult<()> {
        guard(|| self.inner.ensure_may_connect(email))
    }

    /// Consequences of the configuration that are not errors.
    fn warnings(&self) -> PyResult<Vec<Warning>> {
        guard(|| {
            Ok(self
                .inner
                .warnings()
                .into_iter()
                .map(|inner| Warning { inner })
                .collect())
        })
    }

    /// The redirect URI consent requests use (the first authorized one), or None.
    #[getter]
    fn redirect_uri(&self) -> Option<String> {
        self.inner.redirect_uri().map(str::to_owned)
    }

    /// Client id, e.g. `1234-abc.apps.googleusercontent.com`.
    #[getter]
    fn client_id(&self) -> String {
        self.inner.client_id.clone()
    }

    /// Whether a client secret is set (the value itself is never exposed).
    #[getter]
    fn has_client_secret(&self) -> bool {
        self.inner
            .client_secret
            .as_ref()
            .is_some_and(|s| !s.is_empty())
    }

    /// Always "web" for server-side sync.
    #[getter]
    fn application_type(&self) -> String {
        enum_str(&self.inner.application_type)
    }

    /// Authorized JavaScript origins.
    #[getter]
    fn javascript_origins(&self) -> Vec<String> {
        self.inner.javascript_origins.clone()
    }

    /// Authorized redirect URIs; the first is the one consent requests use.
    #[getter]
    fn redirect_uris(&self) -> Vec<String> {
        self.inner.redirect_uris.clone()
    }

    /// Consent screen settings.
    #[getter]
    fn consent_screen(&self) -> ConsentScreen {
        ConsentScreen {
            inner: self.inner.consent_screen.clone(),
        }
    }

    /// The core's JSON (no client secret).
    fn to_json(&self) -> PyResult<String> {
        guard(|| to_json(&self.inner))
    }

    /// The core's JSON as a dict (no client secret).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_dict(py, &self.inner)
    }

    pub fn __repr__(&self) -> String {
        format!(
            "OAuthApp(client_id={}, redirect_uris={:?}, client_secret={})",
            py_str_repr(&self.inner.client_id),
            self.inner.redirect_uris,
            if self.has_client_secret() {
                "<redacted>"
            } else {
                "None"
            }
        )
    }
}

/// The OAuth consent screen settings that change what the library allows.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct ConsentScreen {
    pub inner: model::ConsentScreen,
}

#[pymethods]
impl ConsentScreen {
    /// "internal" or "external".
    #[getter]
    fn user_type(&self) -> String {
        enum_str(&self.inner.user_type)
    }

    /// "testing" or "production".
    #[getter]
    fn publishing_status(&self) -> String {
        enum_str(&self.inner.publishing_status)
    }

    /// Test users (lower-cased), at most 100.
    #[getter]
    fn test_users(&self) -> Vec<String> {
        self.inner.test_users.clone()
    }

    /// Authorized domains; must include the environment's registrable domain.
    #[getter]
    fn authorized_domains(&self) -> Vec<String> {
        self.inner.authorized_domains.clone()
    }

    /// Whether only listed test users may connect (External + Testing).
    #[getter]
    fn is_external_testing(&self) -> bool {
        self.inner.is_external_testing()
    }

    /// The core's JSON as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_dict(py, &self.inner)
    }

    fn __repr__(&self) -> String {
        format!(
            "ConsentScreen(user_type='{}', publishing_status='{}', test_users={}, authorized_domains={:?})",
            enum_str(&self.inner.user_type),
            enum_str(&self.inner.publishing_status),
            self.inner.test_users.len(),
            self.inner.authorized_domains
        )
    }
}

/// A non-fatal configuration consequence the admin should know about.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct Warning {
    pub inner: model::Warning,
}

#[pymethods]
impl Warning {
    /// Stable snake_case code, e.g. "testing_refresh_token_expiry".
    #[getter]
    fn code(&self) -> String {
        self.inner.code.clone()
    }

    /// Explanation for people.
    #[getter]
    fn message(&self) -> String {
        self.inner.message.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Warning(code={}, message={})",
            py_str_repr(&self.inner.code),
            py_str_repr(&self.inner.message)
        )
    }
}
