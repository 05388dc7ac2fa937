//! OAuth lifecycle values (core/src/oauth): `ConsentRequest`, `AccessToken`
//! (a secret: hidden from repr/str, raw value only through `expose()`) and
//! `TokenInfo`. The operations themselves live on `MailSync` (sync.rs).

use pyo3::prelude::*;

use crate::convert::{py_str_repr, to_datetime};

fn opt_datetime<'py>(
    py: Python<'py>,
    value: &Option<time::OffsetDateTime>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    value.as_ref().map(|v| to_datetime(py, v)).transpose()
}

/// A consent request for the mailbox owner's browser, from `connect()`.
/// Immutable.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct ConsentRequest {
    pub inner: mailsync::oauth::ConsentRequest,
}

#[pymethods]
impl ConsentRequest {
    /// The authorization URL to open. It carries the single-use `state`:
    /// treat it as a one-time link.
    #[getter]
    fn url(&self) -> String {
        self.inner.url.to_string()
    }

    /// The mailbox it is for (a UUID string).
    #[getter]
    fn mailbox_id(&self) -> String {
        self.inner.mailbox_id.to_string()
    }

    /// After this instant (aware datetime) the callback raises StateInvalidError.
    #[getter]
    fn expires_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_datetime(py, &self.inner.expires_at)
    }

    fn __repr__(&self) -> String {
        format!(
            "ConsentRequest(mailbox_id={}, url={})",
            py_str_repr(&self.inner.mailbox_id.to_string()),
            py_str_repr(self.inner.url.as_str())
        )
    }
}

/// A valid access token for a mailbox, from `access_token()`. The token is a
/// secret: `repr()` and `str()` hide it; `expose()` returns the raw value for
/// the one place it must go (an XOAUTH2 / bearer header). Immutable, not
/// picklable.
#[pyclass(module = "mailsync", frozen)]
pub struct AccessToken {
    pub inner: mailsync::oauth::AccessToken,
}

#[pymethods]
impl AccessToken {
    /// The raw bearer token. A secret: never log or store it.
    fn expose(&self) -> String {
        self.inner.token.expose().to_owned()
    }

    /// When it expires (aware datetime), or None if unknown.
    #[getter]
    fn expires_at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        opt_datetime(py, &self.inner.expires_at)
    }

    /// The account it belongs to.
    #[getter]
    fn account(&self) -> String {
        self.inner.account.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "AccessToken(account={}, token=<redacted>)",
            py_str_repr(&self.inner.account)
        )
    }
}

/// What is stored for a connected mailbox, without secrets, from
/// `token_info()`. Immutable.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct TokenInfo {
    pub inner: mailsync::oauth::TokenInfo,
}

#[pymethods]
impl TokenInfo {
    /// The account that consented.
    #[getter]
    fn account(&self) -> String {
        self.inner.account.clone()
    }

    /// Granted scopes.
    #[getter]
    fn scopes(&self) -> Vec<String> {
        self.inner.scopes.clone()
    }

    /// Access token expiry (aware datetime), or None if unknown.
    #[getter]
    fn expires_at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        opt_datetime(py, &self.inner.expires_at)
    }

    /// When the tokens were obtained (consent or last refresh).
    #[getter]
    fn obtained_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_datetime(py, &self.inner.obtained_at)
    }

    /// Whether a refresh token is stored.
    #[getter]
    fn has_refresh_token(&self) -> bool {
        self.inner.has_refresh_token
    }

    /// Store version (increases with every refresh).
    #[getter]
    fn version(&self) -> u64 {
        self.inner.version
    }

    fn __repr__(&self) -> String {
        format!(
            "TokenInfo(account={}, scopes={:?}, has_refresh_token={}, version={})",
            py_str_repr(&self.inner.account),
            self.inner.scopes,
            if self.inner.has_refresh_token {
                "True"
            } else {
                "False"
            },
            self.inner.version
        )
    }
}
