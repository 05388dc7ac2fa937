//! The one place where core errors become Python exceptions (and where an
//! exception a host callback raised becomes a core error).
//!
//! `MailsyncError(Exception)` is the base; every entry of
//! [`ErrorCode::ALL`] gets one subclass named CamelCase(code) + "Error"
//! (`capacity_exceeded` -> `CapacityExceededError`), built in a loop at
//! import, with `code`, `transient` and `next_action` as class attributes.
//! Instances also carry `message` and `field`.

use std::ffi::CString;

use mailsync::{Error, ErrorCode};
use pyo3::IntoPyObjectExt;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The base class, then one class per code in `ErrorCode::ALL` order.
static CLASSES: PyOnceLock<(Py<PyType>, Vec<Py<PyType>>)> = PyOnceLock::new();

/// `capacity_exceeded` -> `CapacityExceededError`.
pub fn class_name(code: ErrorCode) -> String {
    let camel: String = code
        .as_str()
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    camel + "Error"
}

/// A new exception class `mailsync.<name>` with class attributes.
fn new_class<'py>(
    base: &Bound<'py, PyType>,
    name: &str,
    doc: &str,
    attrs: &[(&str, Bound<'py, PyAny>)],
) -> PyResult<Py<PyType>> {
    let (name, doc) = (
        CString::new(format!("mailsync.{name}"))?,
        CString::new(doc)?,
    );
    // Not through `new_type`'s `dict`: pyo3 0.30.1 releases it before the call.
    let class = PyErr::new_type(base.py(), &name, Some(&doc), Some(base), None)?;
    for (key, value) in attrs {
        class.bind(base.py()).setattr(*key, value)?;
    }
    Ok(class)
}

/// Creates the classes and adds them to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let (base, classes) = CLASSES.get_or_try_init(py, || -> PyResult<_> {
        let doc = "Base class of every mailsync error: `code` (the stable snake_case code, the same in every \
                   language), `message` (for people; never contains secrets), `field` (the field at fault, \
                   else None), `transient` (whether retrying later unchanged may succeed), `next_action`.";
        let base = new_class(&py.get_type::<PyException>(), "MailsyncError", doc, &[("field", py.None().into_bound(py))])?;
        let classes = ErrorCode::ALL.iter().map(|&code| {
            let attrs = [
                ("code", code.as_str().into_bound_py_any(py)?),
                ("transient", code.is_transient().into_bound_py_any(py)?),
                ("next_action", code.next_action().into_bound_py_any(py)?),
            ];
            let doc = format!("Code `{}`: {}", code.as_str(), code.next_action());
            new_class(base.bind(py), &class_name(code), &doc, &attrs)
        });
        Ok((base.clone_ref(py), classes.collect::<PyResult<Vec<_>>>()?))
    })?;
    m.add("MailsyncError", base.bind(py))?;
    for (code, class) in ErrorCode::ALL.iter().zip(classes) {
        m.add(class_name(*code).as_str(), class.bind(py))?;
    }
    Ok(())
}

fn class_for(py: Python<'_>, code: ErrorCode) -> Option<&Bound<'_, PyType>> {
    let (_, classes) = CLASSES.get(py)?;
    let index = ErrorCode::ALL.iter().position(|c| *c == code)?;
    Some(classes[index].bind(py))
}

/// The exception instance for a core error.
pub fn exception<'py>(py: Python<'py>, err: &Error) -> PyResult<Bound<'py, PyAny>> {
    let class = class_for(py, err.code()).ok_or_else(|| PyException::new_err(err.to_string()))?;
    let value = class.call1((err.message(),))?;
    value.setattr("message", err.message())?;
    value.setattr("field", err.field())?;
    Ok(value)
}

/// Converts a core error into its exception.
pub fn to_py_err(err: Error) -> PyErr {
    Python::attach(|py| match exception(py, &err) {
        Ok(value) => PyErr::from_value(value),
        Err(e) => e,
    })
}

/// The core error for an exception a host callback raised (a sink's
/// method): a mailsync exception keeps its code, any other becomes
/// `sink_failed`; the message starts with the exception's class name.
pub fn from_py_err(py: Python<'_>, err: PyErr) -> Error {
    let value = err.value(py);
    let code = CLASSES
        .get(py)
        .filter(|(base, _)| value.is_instance(base.bind(py)).unwrap_or(false))
        .and_then(|_| value.getattr("code").ok()?.extract::<ErrorCode>().ok());
    let name = value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".to_owned());
    let text = value
        .str()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        name
    } else {
        format!("{name}: {text}")
    };
    Error::new(code.unwrap_or(ErrorCode::SinkFailed), message)
}

/// The exception class for a code.
#[pyo3_stub_gen::derive::gen_stub_pyfunction(module = "mailsync")]
#[pyfunction]
pub fn error_class(py: Python<'_>, code: ErrorCode) -> Py<PyType> {
    class_for(py, code)
        .map(|c| c.clone().unbind())
        .unwrap_or_else(|| py.get_type::<PyException>().unbind())
}

/// The exception the library raises for an error with this code, message
/// and field (not raised). The package uses it for integers out of range.
#[pyfunction]
#[pyo3(signature = (code, message, field=None))]
pub fn _error(
    py: Python<'_>,
    code: ErrorCode,
    message: &str,
    field: Option<&str>,
) -> PyResult<Py<PyAny>> {
    let err = match field {
        Some(field) if code == ErrorCode::Validation => Error::validation(field, message),
        _ => Error::new(code, message),
    };
    exception(py, &err).map(Bound::unbind)
}

/// Test hook: panics inside an entry point, synchronously or (with
/// `awaitable`) in an awaited operation, to prove it becomes InternalError.
#[pyfunction]
#[pyo3(signature = (awaitable=false))]
pub fn _panic_for_test(py: Python<'_>, awaitable: bool) -> PyResult<Py<PyAny>> {
    fn boom() -> mailsync::Result<()> {
        panic!("deliberate test panic")
    }
    if awaitable {
        return crate::runtime::run_async(py, async { boom() }).map(|a| a.0);
    }
    mailsync::ffi::guard(boom).map_err(to_py_err)?;
    Ok(py.None())
}
