//! Connection events: `MailboxEvent` and the adapter that lets a Python
//! callable be the core's `MailboxEventListener`.
//!
//! The core calls the listener synchronously on the runtime thread that
//! caused the event, before the operation's result is returned. The adapter
//! attaches to the interpreter, calls the callable with a `MailboxEvent`, and
//! reports anything it raises through `sys.unraisablehook` (as Python does
//! for exceptions it cannot propagate): a failing callback never fails the
//! operation, never poisons the library and never crosses as a panic.

use std::panic::{AssertUnwindSafe, catch_unwind};

use mailsync::oauth;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::convert::{enum_str, py_str_repr, to_datetime, to_dict, to_json};
use crate::errors::guard;

/// A Python callable adapted to the core's listener trait.
pub struct PyEventListener {
    callable: Py<PyAny>,
}

impl PyEventListener {
    /// `None` for `None`; TypeError for something that is not callable.
    pub fn from_callable(
        value: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Option<std::sync::Arc<PyEventListener>>> {
        match value {
            None => Ok(None),
            Some(v) if v.is_none() => Ok(None),
            Some(v) if v.is_callable() => Ok(Some(std::sync::Arc::new(PyEventListener {
                callable: v.unbind(),
            }))),
            Some(v) => Err(PyTypeError::new_err(format!(
                "event_listener must be callable (taking one MailboxEvent) or None, not {}",
                v.get_type().name()?
            ))),
        }
    }

    /// The callable.
    pub fn callable(&self, py: Python<'_>) -> Py<PyAny> {
        self.callable.clone_ref(py)
    }
}

impl oauth::MailboxEventListener for PyEventListener {
    fn on_event(&self, event: &oauth::MailboxEvent) {
        let event = MailboxEvent {
            inner: event.clone(),
        };
        // Nothing may unwind out of here; during interpreter shutdown
        // try_attach declines and the event is dropped.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            Python::try_attach(|py| {
                let callable = self.callable.bind(py);
                if let Err(err) = callable.call1((event,)) {
                    err.write_unraisable(py, Some(callable));
                }
            })
        }));
    }
}

/// Something that happened to a mailbox's connection, for the host to act on
/// (e.g. tell the owner to reconnect). Never carries a secret. Immutable.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct MailboxEvent {
    pub inner: oauth::MailboxEvent,
}

#[pymethods]
impl MailboxEvent {
    /// "connected", "refreshed", "needs_reconsent" or "disconnected".
    #[getter]
    fn kind(&self) -> String {
        enum_str(&self.inner.kind)
    }

    /// The mailbox's id (a UUID string).
    #[getter]
    fn mailbox_id(&self) -> String {
        self.inner.mailbox_id.to_string()
    }

    /// The mailbox's address.
    #[getter]
    fn email(&self) -> String {
        self.inner.email.clone()
    }

    /// The error code behind the event (e.g. "token_revoked"), or None.
    #[getter]
    fn code(&self) -> Option<String> {
        self.inner.code.clone()
    }

    /// What happened and what to do, for people.
    #[getter]
    fn message(&self) -> String {
        self.inner.message.clone()
    }

    /// When (aware datetime).
    #[getter]
    fn at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_datetime(py, &self.inner.at)
    }

    /// The core's serde JSON.
    fn to_json(&self) -> PyResult<String> {
        guard(|| to_json(&self.inner))
    }

    /// The core's serde JSON as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_dict(py, &self.inner)
    }

    fn __repr__(&self) -> String {
        format!(
            "MailboxEvent(kind={}, email={}, code={})",
            py_str_repr(self.inner.kind.as_str()),
            py_str_repr(&self.inner.email),
            self.inner
                .code
                .as_deref()
                .map(py_str_repr)
                .unwrap_or_else(|| "None".to_owned())
        )
    }
}
