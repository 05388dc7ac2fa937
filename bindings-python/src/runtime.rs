//! The binding's one tokio runtime (pyo3-async-runtimes' global runtime) and
//! the two ways an async core operation reaches Python: as an awaitable
//! (asyncio) or blocking the calling thread with the GIL released.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use mailsync::Error;
use pyo3::IntoPyObjectExt;
use pyo3::prelude::*;

use crate::errors::{panic_error, to_py_err};

/// Runs `fut` on the binding's runtime and returns an asyncio awaitable.
/// Core errors and panics become the mapped exception when awaited.
pub fn run_async<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, Error>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(to_py_err(err)),
            Err(payload) => Err(to_py_err(panic_error(payload))),
        }
    })
}

/// Runs `fut` to completion on the binding's runtime, blocking the calling
/// thread with the GIL released.
pub fn run_blocking<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, Error>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let runtime = pyo3_async_runtimes::tokio::get_runtime();
    // Spawn rather than block_on so the future runs on a runtime worker even
    // if the caller is itself inside some other runtime's context.
    let outcome = py.detach(|| {
        let handle = runtime.spawn(AssertUnwindSafe(fut).catch_unwind());
        futures::executor::block_on(handle)
    });
    match outcome {
        Ok(Ok(Ok(value))) => value.into_bound_py_any(py),
        Ok(Ok(Err(err))) => Err(to_py_err(err)),
        Ok(Err(payload)) => Err(to_py_err(panic_error(payload))),
        Err(join) => Err(to_py_err(Error::new(
            mailsync::ErrorCode::Internal,
            format!("mailsync task failed: {join}"),
        ))),
    }
}

/// Whether an operation returns an awaitable or blocks.
#[derive(Clone, Copy)]
pub enum Mode {
    /// asyncio awaitable.
    Async,
    /// Blocking call, GIL released.
    Blocking,
}

/// Dispatches on [`Mode`].
pub fn run<'py, F, T>(py: Python<'py>, mode: Mode, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, Error>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    match mode {
        Mode::Async => run_async(py, fut),
        Mode::Blocking => run_blocking(py, fut),
    }
}
