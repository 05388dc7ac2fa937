//! Test & Enable values (core/src/check.rs): `TestOptions`, `TestReport`,
//! `DirectionReport`, `StepResult`, `Diagnosis`. Immutable; reports have
//! `to_json()`/`to_dict()` (the core's serde JSON).

use mailsync::check;
use pyo3::prelude::*;

use crate::convert::{enum_str, py_str_repr, to_datetime, to_dict, to_json};
use crate::errors::guard;

/// Options for `test_and_enable_with` / `test_all_mailboxes`. Immutable.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct TestOptions {
    pub inner: check::TestOptions,
}

#[pymethods]
impl TestOptions {
    #[new]
    #[pyo3(signature = (*, send_test_message=false))]
    fn new(send_test_message: bool) -> TestOptions {
        TestOptions {
            inner: check::TestOptions { send_test_message },
        }
    }

    /// Also send a "Test Message" from the mailbox to itself.
    #[getter]
    fn send_test_message(&self) -> bool {
        self.inner.send_test_message
    }

    fn __repr__(&self) -> String {
        format!(
            "TestOptions(send_test_message={})",
            if self.inner.send_test_message {
                "True"
            } else {
                "False"
            }
        )
    }
}

/// One step of a check. Immutable.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct StepResult {
    pub inner: check::StepResult,
}

#[pymethods]
impl StepResult {
    /// Stable step name: "credentials", "connect", "tls", "greeting",
    /// "capabilities", "authenticate", "select_inbox", "stat", "ehlo", "send".
    #[getter]
    fn step(&self) -> String {
        self.inner.step.clone()
    }

    /// Whether it passed.
    #[getter]
    fn ok(&self) -> bool {
        self.inner.ok
    }

    /// How long it took, in milliseconds.
    #[getter]
    fn duration_ms(&self) -> u64 {
        self.inner.duration_ms
    }

    /// What was observed, or the error message; None if nothing.
    #[getter]
    fn detail(&self) -> Option<String> {
        self.inner.detail.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "StepResult(step={}, ok={})",
            py_str_repr(&self.inner.step),
            if self.inner.ok { "True" } else { "False" }
        )
    }
}

/// Why a direction failed: the step, the stable error code (the same codes
/// as the exceptions; `mailsync.error_class(d.code)` gives the class) and
/// the next action. Immutable.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct Diagnosis {
    pub inner: check::Diagnosis,
}

#[pymethods]
impl Diagnosis {
    /// The step that failed.
    #[getter]
    fn step(&self) -> String {
        self.inner.step.clone()
    }

    /// Stable error code (e.g. "protocol_disabled").
    #[getter]
    fn code(&self) -> String {
        self.inner.code.clone()
    }

    /// What happened.
    #[getter]
    fn message(&self) -> String {
        self.inner.message.clone()
    }

    /// What the user or admin should do.
    #[getter]
    fn next_action(&self) -> String {
        self.inner.next_action.clone()
    }

    /// Whether the check will pass later without changes.
    #[getter]
    fn transient(&self) -> bool {
        self.inner.transient
    }

    fn __repr__(&self) -> String {
        format!(
            "Diagnosis(step={}, code={})",
            py_str_repr(&self.inner.step),
            py_str_repr(&self.inner.code)
        )
    }
}

/// The result of one direction's check. Immutable.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct DirectionReport {
    pub inner: check::DirectionReport,
}

#[pymethods]
impl DirectionReport {
    /// "incoming" or "outgoing".
    #[getter]
    fn direction(&self) -> String {
        enum_str(&self.inner.direction)
    }

    /// "IMAP", "POP3" or "SMTP".
    #[getter]
    fn protocol(&self) -> String {
        self.inner.protocol.clone()
    }

    /// "host:port" checked.
    #[getter]
    fn server(&self) -> String {
        self.inner.server.clone()
    }

    /// Whether every step passed.
    #[getter]
    fn success(&self) -> bool {
        self.inner.success
    }

    /// Steps in order, the failing one last.
    #[getter]
    fn steps(&self) -> Vec<StepResult> {
        self.inner
            .steps
            .iter()
            .cloned()
            .map(|inner| StepResult { inner })
            .collect()
    }

    /// The failure, or None.
    #[getter]
    fn diagnosis(&self) -> Option<Diagnosis> {
        self.inner
            .diagnosis
            .clone()
            .map(|inner| Diagnosis { inner })
    }

    /// One-line summary for people.
    #[getter]
    fn summary(&self) -> String {
        self.inner.summary.clone()
    }

    /// Total time, in milliseconds.
    #[getter]
    fn duration_ms(&self) -> u64 {
        self.inner.duration_ms
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
            "DirectionReport(direction={}, protocol={}, server={}, success={})",
            py_str_repr(&enum_str(&self.inner.direction)),
            py_str_repr(&self.inner.protocol),
            py_str_repr(&self.inner.server),
            if self.inner.success { "True" } else { "False" }
        )
    }
}

/// The outcome of Test & Enable for one mailbox. Immutable.
#[pyclass(module = "mailsync", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq)]
pub struct TestReport {
    pub inner: check::TestReport,
}

#[pymethods]
impl TestReport {
    /// The mailbox tested (a UUID string).
    #[getter]
    fn mailbox_id(&self) -> String {
        self.inner.mailbox_id.to_string()
    }

    /// Its address.
    #[getter]
    fn email(&self) -> String {
        self.inner.email.clone()
    }

    /// Incoming check, or None when incoming delivery is "none".
    #[getter]
    fn incoming(&self) -> Option<DirectionReport> {
        self.inner
            .incoming
            .clone()
            .map(|inner| DirectionReport { inner })
    }

    /// Outgoing check, or None when outgoing delivery is "none".
    #[getter]
    fn outgoing(&self) -> Option<DirectionReport> {
        self.inner
            .outgoing
            .clone()
            .map(|inner| DirectionReport { inner })
    }

    /// "success" when every check that ran passed, else "failure".
    #[getter]
    fn outcome(&self) -> String {
        enum_str(&self.inner.outcome)
    }

    /// Whether incoming sync is enabled after the test.
    #[getter]
    fn incoming_enabled(&self) -> bool {
        self.inner.incoming_enabled
    }

    /// Whether outgoing sync is enabled after the test.
    #[getter]
    fn outgoing_enabled(&self) -> bool {
        self.inner.outgoing_enabled
    }

    /// When the test started (aware datetime).
    #[getter]
    fn tested_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_datetime(py, &self.inner.tested_at)
    }

    /// Whether every check that ran passed.
    fn is_success(&self) -> bool {
        self.inner.is_success()
    }

    /// The first failure, or None.
    fn first_failure(&self) -> Option<Diagnosis> {
        self.inner
            .first_failure()
            .cloned()
            .map(|inner| Diagnosis { inner })
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
            "TestReport(email={}, outcome={}, incoming_enabled={}, outgoing_enabled={})",
            py_str_repr(&self.inner.email),
            py_str_repr(&enum_str(&self.inner.outcome)),
            if self.inner.incoming_enabled {
                "True"
            } else {
                "False"
            },
            if self.inner.outgoing_enabled {
                "True"
            } else {
                "False"
            }
        )
    }
}
