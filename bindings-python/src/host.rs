//! Calling the host: a Python callable (plain or coroutine function) that
//! the core calls back — a subscription's callback, a progress callback, a
//! sink's methods.
//!
//! A call is prepared on a blocking thread of the runtime (attaching may
//! wait for the GIL, which must not stall a runtime worker), never holding
//! the GIL across an await. In the asyncio flavour it runs on the caller's
//! event loop (`loop.call_soon_threadsafe`; a coroutine becomes a task of
//! that loop); in the blocking flavour it runs on that runtime thread (a
//! coroutine is run with `asyncio.run`). Its outcome goes to a `settle`
//! closure, exactly once: the value (a coroutine's result) or the
//! exception; if the loop closes first, `settle` is dropped unrun.

use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use mailsync::{Error, ErrorCode};
use pyo3::IntoPyObjectExt;
use pyo3::exceptions::asyncio::CancelledError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use tokio::sync::oneshot;

use crate::errors::from_py_err;
use crate::runtime::with_python;

/// Builds the arguments, attached to the interpreter.
pub type Args = Box<dyn for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyTuple>> + Send>;

/// Receives the outcome of a call, attached to the interpreter.
type Settle = Box<dyn for<'py> FnOnce(Python<'py>, PyResult<Bound<'py, PyAny>>) + Send>;

/// Holds a call's `settle` until the outcome is known; also the
/// done-callback of the task that runs a coroutine.
#[pyclass(frozen)]
struct Reply(Mutex<Option<Settle>>);

impl Reply {
    fn settle<'py>(&self, py: Python<'py>, outcome: PyResult<Bound<'py, PyAny>>) {
        let settle = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(settle) = settle {
            settle(py, outcome);
        }
    }
}

#[pymethods]
impl Reply {
    fn __call__(&self, task: &Bound<'_, PyAny>) {
        // The coroutine's value, or what it raised (CancelledError if cancelled).
        self.settle(task.py(), task.call_method0(intern!(task.py(), "result")));
    }
}

/// `loop.call_soon_threadsafe` target: [`invoke`] on the loop's thread.
#[pyclass(frozen)]
struct Invoke;

#[pymethods]
impl Invoke {
    fn __call__(
        &self,
        callable: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        reply: &Bound<'_, Reply>,
    ) {
        invoke(callable, args, reply, true);
    }
}

/// Calls `callable(*args)`; an awaitable it returns is awaited as a task on
/// the running loop (`on_loop`) or with `asyncio.run`.
fn invoke(
    callable: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    reply: &Bound<'_, Reply>,
    on_loop: bool,
) {
    let py = callable.py();
    let outcome = (|| -> PyResult<Option<Bound<'_, PyAny>>> {
        let result = callable.call1(args)?;
        if result.is_instance_of::<PyList>()
            || !py
                .import(intern!(py, "inspect"))?
                .call_method1(intern!(py, "isawaitable"), (&result,))?
                .is_truthy()?
        {
            return Ok(Some(result));
        }
        let asyncio = py.import(intern!(py, "asyncio"))?;
        if !on_loop {
            return asyncio
                .call_method1(intern!(py, "run"), (result,))
                .map(Some);
        }
        let task = asyncio.call_method1(intern!(py, "ensure_future"), (&result,))?;
        abandon_quietly(&task, &result)?;
        task.call_method1(intern!(py, "add_done_callback"), (reply,))?;
        Ok(None)
    })();
    match outcome {
        Ok(None) => {}
        Ok(Some(value)) => reply.get().settle(py, Ok(value)),
        Err(err) => reply.get().settle(py, Err(err)),
    }
}

/// A call's task that its loop abandons (the loop closes while the task is
/// pending, e.g. an event handed over while `asyncio.run` winds down) ends
/// with the subscription or call it served: that is not a bug of the host's
/// program, so asyncio's "Task was destroyed but it is pending!" is switched
/// off for it (as `run_until_complete` does for its own task), and a
/// coroutine that never got to run is closed when its task goes, instead of
/// warning "coroutine … was never awaited".
fn abandon_quietly(task: &Bound<'_, PyAny>, awaitable: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = task.py();
    // Any loop's task may lack the attribute (custom task factories): then
    // asyncio's own behaviour stays.
    let _ = task.setattr(intern!(py, "_log_destroy_pending"), false);
    if awaitable.is(task) || !awaitable.hasattr(intern!(py, "close"))? {
        return Ok(());
    }
    let finalizer = py.import(intern!(py, "weakref"))?.call_method1(
        intern!(py, "finalize"),
        (task, awaitable.getattr(intern!(py, "close"))?),
    )?;
    // Not at interpreter exit: the task may still be running on another
    // thread's loop then.
    finalizer.setattr(intern!(py, "atexit"), false)
}

/// Hands one call of `callable` to the host; `Err` when it could not be
/// handed (the loop is closed, the interpreter exiting): then `settle` is
/// dropped unrun.
async fn hand(
    callable: Arc<Py<PyAny>>,
    event_loop: Arc<Option<Py<PyAny>>>,
    args: Args,
    settle: Settle,
) -> Result<(), Error> {
    let handed = tokio::task::spawn_blocking(move || {
        with_python(move |py| {
            let reply =
                Bound::new(py, Reply(Mutex::new(Some(settle)))).map_err(|e| from_py_err(py, e))?;
            let args = match args(py) {
                Ok(args) => args,
                Err(err) => {
                    reply.get().settle(py, Err(err));
                    return Ok(());
                }
            };
            match event_loop.as_ref() {
                Some(lp) => lp
                    .bind(py)
                    .call_method1(
                        intern!(py, "call_soon_threadsafe"),
                        (Invoke, callable.bind(py), args, reply),
                    )
                    .map(drop)
                    .map_err(|e| from_py_err(py, e)),
                None => {
                    invoke(callable.bind(py), &args, &reply, false);
                    Ok(())
                }
            }
        })
    })
    .await;
    match handed {
        Ok(Some(result)) => result,
        Ok(None) => Err(Error::new(
            ErrorCode::Internal,
            "the interpreter is exiting: mailsync no longer calls Python",
        )),
        Err(join) => Err(Error::new(
            ErrorCode::Internal,
            format!("calling Python failed: {join}"),
        )),
    }
}

/// Calls `callable(*args)` and converts what it returns (or what its
/// coroutine returns) with `extract`. A Python exception becomes the error
/// [`from_py_err`] makes of it.
pub async fn call<T: Send + 'static>(
    callable: Arc<Py<PyAny>>,
    event_loop: Arc<Option<Py<PyAny>>>,
    args: Args,
    extract: for<'py> fn(&Bound<'py, PyAny>) -> PyResult<T>,
) -> Result<T, Error> {
    let (tx, rx) = oneshot::channel();
    let settle: Settle = Box::new(move |py, outcome| {
        let result = outcome.and_then(|value| extract(&value));
        let _ = tx.send(result.map_err(|err| from_py_err(py, err)));
    });
    hand(callable, event_loop, args, settle).await?;
    rx.await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorCode::Internal,
            "Python was not called back: its event loop stopped",
        ))
    })
}

/// Hands each item to `callback`, one at a time: the next only when the
/// callback returned (and its coroutine finished). What the callback raises
/// goes to `sys.unraisablehook`. Ends with the stream, or when a call could
/// not be handed or never completed (the loop closed or stopped).
pub async fn deliver_each<T, S>(
    items: S,
    callback: Arc<Py<PyAny>>,
    event_loop: Arc<Option<Py<PyAny>>>,
) where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
    S: Stream<Item = T> + Send,
{
    let mut items = std::pin::pin!(items);
    while let Some(item) = items.next().await {
        let (tx, rx) = oneshot::channel::<()>();
        let target = callback.clone();
        let settle: Settle = Box::new(move |py, outcome| {
            if let Err(err) = outcome
                && !err.is_instance_of::<CancelledError>(py)
            {
                err.write_unraisable(py, Some(target.bind(py)));
            }
            let _ = tx.send(());
        });
        let args: Args = Box::new(move |py| PyTuple::new(py, [item.into_bound_py_any(py)?]));
        if hand(callback.clone(), event_loop.clone(), args, settle)
            .await
            .is_err()
            || rx.await.is_err()
        {
            break;
        }
    }
}
