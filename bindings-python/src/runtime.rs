//! The binding's own tokio runtime, its shutdown at interpreter exit, and the
//! two ways an async core operation reaches Python: as an awaitable
//! (asyncio) or blocking the calling thread with the GIL released.
//!
//! # Why not pyo3-async-runtimes
//!
//! Up to round 3 the awaitables came from
//! `pyo3_async_runtimes::tokio::future_into_py` on that crate's global
//! runtime. It completes the asyncio future from a tokio blocking thread with
//! `Python::attach` + `loop.call_soon_threadsafe(...)`. `call_soon_threadsafe`
//! writes to the loop's self-pipe, which releases the GIL: the event loop
//! then resumes the awaiting coroutine, `asyncio.run` returns, and the main
//! thread runs `Py_FinalizeEx` while the tokio thread is still inside Python
//! (dropping its references, then `PyGILState_Release`). The process died
//! with SIGSEGV (in `tupledealloc` on the tokio thread while the main thread
//! was in the finalizer's GC) or SIGABRT ("Fatal Python error:
//! PyGILState_Release: thread state … must be current when releasing /
//! Python runtime state: finalizing"). pyo3's own finalization check
//! (`Py_IsFinalizing`) exists only for Python >= 3.13 builds, and this is an
//! abi3-py310 module, so nothing stopped it.
//!
//! # What this module guarantees instead
//!
//! * Every attachment to the interpreter from a thread this module does not
//!   own (a runtime thread completing an awaitable, the delivery of
//!   subscription events in sync.rs) goes through [`with_python`], which counts it.
//! * [`shutdown`] is registered with `atexit` when the module is imported.
//!   `atexit` runs before the interpreter starts finalizing (after
//!   non-daemon threads were joined). It closes the gate, so no runtime
//!   thread attaches again, waits (with the GIL released) until every thread
//!   already attached has left, then shuts the runtime down. A completion or
//!   event that arrives later is dropped without touching Python; the
//!   references it holds go to pyo3's deferred-decref pool.
//! * A daemon thread that is blocked in the blocking API at that point, or
//!   calls mailsync afterwards, is parked for good instead of re-entering a
//!   finalizing interpreter (what CPython itself does to such threads from
//!   3.14 on); an awaitable created on a daemon thread's loop then never
//!   completes. The thread that runs the exit handlers gets `RuntimeError`
//!   instead, so nothing can hang the exit.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::{self, ThreadId};
use std::time::Duration;

use std::marker::PhantomData;

use mailsync::Error;
use pyo3::IntoPyObjectExt;
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::AbortHandle;

use pyo3_stub_gen::{PyStubType, TypeInfo};

use crate::errors::to_py_err;

/// How long the exit handler waits for runtime threads to finish their
/// current step. Tasks are dropped at their next await; the bound only
/// matters for a thread stuck in blocking work (e.g. a DNS lookup), which
/// then ends with the process without ever touching Python.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

struct State {
    /// Created on first use, taken by [`shutdown`].
    runtime: Option<Runtime>,
    /// The process that created `runtime`. A child made by `os.fork()`
    /// inherits the value but not the runtime's threads.
    runtime_pid: u32,
    /// A handle to `runtime`, for spawning without holding the lock.
    handle: Option<Handle>,
    /// Set by [`shutdown`]; never cleared.
    shut_down: bool,
    /// The thread that ran [`shutdown`] (the interpreter's main thread).
    finalizer: Option<ThreadId>,
    /// Threads currently inside [`with_python`].
    attached: usize,
}

struct Lifecycle {
    state: Mutex<State>,
    /// Signalled when `attached` drops to zero.
    idle: Condvar,
}

static LIFECYCLE: Lifecycle = Lifecycle {
    state: Mutex::new(State {
        runtime: None,
        runtime_pid: 0,
        handle: None,
        shut_down: false,
        finalizer: None,
        attached: 0,
    }),
    idle: Condvar::new(),
};

fn state() -> MutexGuard<'static, State> {
    // Nothing panics while holding the lock; recover anyway rather than panic.
    LIFECYCLE.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why no runtime handle is available.
enum Unavailable {
    /// Shut down, and this is the thread running the exit handlers: refuse
    /// with RuntimeError.
    Refuse,
    /// Shut down, and this is another (daemon) thread: never return into
    /// the interpreter.
    Park,
    /// The runtime could not be created.
    Failed(std::io::Error),
}

impl Unavailable {
    fn into_py_err(self) -> PyErr {
        match self {
            Unavailable::Failed(err) => to_py_err(Error::new(
                mailsync::ErrorCode::Internal,
                format!("mailsync could not start its runtime: {err}"),
            )),
            _ => PyRuntimeError::new_err(
                "mailsync cannot start an operation: the interpreter is shutting down \
                 (mailsync's runtime stopped at exit)",
            ),
        }
    }
}

/// The runtime's handle, creating the runtime on first use.
fn runtime_handle() -> Result<Handle, Unavailable> {
    let mut state = state();
    if state.shut_down {
        return Err(if state.finalizer == Some(thread::current().id()) {
            Unavailable::Refuse
        } else {
            Unavailable::Park
        });
    }
    if state.runtime.is_some() && state.runtime_pid != std::process::id() {
        // A child made by `os.fork()`: the inherited runtime has no threads
        // here (and threads counted as attached do not exist). Start afresh.
        std::mem::forget(state.runtime.take());
        state.handle = None;
        state.attached = 0;
    }
    if let Some(handle) = &state.handle {
        return Ok(handle.clone());
    }
    let runtime = Builder::new_multi_thread()
        .enable_all()
        .thread_name("mailsync-worker")
        .build()
        .map_err(Unavailable::Failed)?;
    let handle = runtime.handle().clone();
    state.runtime = Some(runtime);
    state.runtime_pid = std::process::id();
    state.handle = Some(handle.clone());
    Ok(handle)
}

/// Blocks the calling (daemon) thread until the process ends. Called with
/// the GIL released.
fn park_forever() -> ! {
    loop {
        thread::park();
    }
}

/// Whether a thread that is about to return into the interpreter must not:
/// the runtime was shut down by another thread (the interpreter is exiting).
fn must_not_return() -> bool {
    let state = state();
    state.shut_down && state.finalizer != Some(thread::current().id())
}

/// Runs `f` attached to the interpreter, unless the interpreter is exiting
/// (or not initialized): then returns `None` without touching Python. For
/// threads the interpreter does not own (runtime threads).
pub fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    {
        let mut state = state();
        if state.shut_down {
            return None;
        }
        state.attached += 1;
    }
    // Leaves the count after `Python::try_attach` has detached again (also
    // when `f` panics).
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            let mut state = state();
            state.attached -= 1;
            if state.attached == 0 {
                LIFECYCLE.idle.notify_all();
            }
        }
    }
    let _leave = Leave;
    Python::try_attach(f)
}

/// The `atexit` hook: no runtime thread enters Python after it returns.
#[pyfunction]
#[pyo3(name = "_shutdown_runtime")]
pub fn shutdown(py: Python<'_>) {
    let runtime = {
        let mut state = state();
        if state.shut_down {
            return;
        }
        state.shut_down = true;
        state.finalizer = Some(thread::current().id());
        state.handle = None;
        let runtime = state.runtime.take();
        if runtime.is_some() && state.runtime_pid != std::process::id() {
            // A child made by `os.fork()` that never used mailsync: the
            // runtime's threads, and any counted as attached, exist only in
            // the parent. Waiting for them would hang; leave them alone.
            std::mem::forget(runtime);
            state.attached = 0;
            None
        } else {
            runtime
        }
    };
    // Release the GIL: a thread already counted in `with_python` may be
    // waiting for it.
    py.detach(move || {
        let _ = catch_unwind(AssertUnwindSafe(move || {
            let mut state = state();
            while state.attached > 0 {
                state = LIFECYCLE
                    .idle
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            drop(state);
            if let Some(runtime) = runtime {
                runtime.shutdown_timeout(SHUTDOWN_GRACE);
            }
        }));
    });
}

/// Registers [`shutdown`] with `atexit`; called once at import.
pub fn register_shutdown(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let hook = wrap_pyfunction!(shutdown, m)?;
    py.import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}

/// `loop.call_soon_threadsafe` target: settles the asyncio future unless it
/// was cancelled (or otherwise settled) meanwhile. Runs on the loop's thread.
#[pyclass(frozen)]
struct SetOutcome;

#[pymethods]
impl SetOutcome {
    fn __call__(
        &self,
        future: &Bound<'_, PyAny>,
        ok: bool,
        value: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = future.py();
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        let method = if ok {
            intern!(py, "set_result")
        } else {
            intern!(py, "set_exception")
        };
        future.call_method1(method, (value,))?;
        Ok(())
    }
}

/// Done-callback of the asyncio future: cancelling it aborts the task.
#[pyclass(frozen)]
struct AbortOnCancel {
    task: AbortHandle,
}

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future
            .call_method0(intern!(future.py(), "cancelled"))?
            .is_truthy()?
        {
            self.task.abort();
        }
        Ok(())
    }
}

/// Hands an outcome to the future's event loop. Runs on a runtime blocking
/// thread; a no-op once the interpreter is exiting or the loop is closed.
fn complete<T>(event_loop: Py<PyAny>, future: Py<PyAny>, outcome: Result<T, Error>)
where
    T: for<'a> IntoPyObject<'a> + 'static,
{
    let _ = catch_unwind(AssertUnwindSafe(move || {
        with_python(move |py| {
            let (ok, value) = match outcome.map(|value| result_value(py, value)) {
                Ok(Ok(value)) => (true, value),
                Ok(Err(err)) => (false, err.into_value(py).into_any()),
                Err(err) => (false, to_py_err(err).into_value(py).into_any()),
            };
            // Fails only when the loop is closed: then nothing can await the
            // future any more, and the outcome is dropped.
            let _ = event_loop.bind(py).call_method1(
                intern!(py, "call_soon_threadsafe"),
                (SetOutcome, future.bind(py), ok, value),
            );
        });
    }));
}

/// What an awaitable resolves to: the value, or `None` for an operation
/// without a result (`()`), as its blocking twin returns (pyo3 would make
/// `()` an empty tuple).
fn result_value<T>(py: Python<'_>, value: T) -> PyResult<Py<PyAny>>
where
    T: for<'a> IntoPyObject<'a> + 'static,
{
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<()>() {
        return Ok(py.None());
    }
    value.into_py_any(py)
}

/// An asyncio future resolving to a `T` (typed `typing.Awaitable[T]` in the stub).
pub struct Awaitable<T>(pub Py<PyAny>, PhantomData<fn() -> T>);

impl<'py, T> IntoPyObject<'py> for Awaitable<T> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        Ok(self.0.into_bound(py))
    }
}

impl<T: PyStubType> PyStubType for Awaitable<T> {
    fn type_output() -> TypeInfo {
        let inner = T::type_output();
        let mut import = inner.import.clone();
        import.insert("typing".into());
        TypeInfo {
            name: format!("typing.Awaitable[{}]", inner.name),
            source_module: None,
            import,
            type_refs: inner.type_refs,
        }
    }
}

/// Runs `fut` on the binding's runtime and returns an asyncio awaitable
/// (a future of the running loop). Core errors and panics become the mapped
/// exception when awaited. RuntimeError when no loop is running.
pub fn run_async<F, T>(py: Python<'_>, fut: F) -> PyResult<Awaitable<T>>
where
    F: Future<Output = Result<T, Error>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = py
        .import(intern!(py, "asyncio"))?
        .call_method0(intern!(py, "get_running_loop"))?;
    let future = event_loop.call_method0(intern!(py, "create_future"))?;
    let handle = match runtime_handle() {
        Ok(handle) => handle,
        // A daemon thread's loop during exit: the future never completes.
        Err(Unavailable::Park) => return Ok(Awaitable(future.unbind(), PhantomData)),
        Err(other) => return Err(other.into_py_err()),
    };
    let loop_ref = event_loop.unbind();
    let future_ref = future.clone().unbind();
    let task = handle.spawn(async move {
        let outcome = mailsync::ffi::guard_async(fut).await;
        // Attaching may wait for the GIL: not on a runtime worker.
        drop(tokio::task::spawn_blocking(move || {
            complete(loop_ref, future_ref, outcome)
        }));
    });
    future.call_method1(
        intern!(py, "add_done_callback"),
        (AbortOnCancel {
            task: task.abort_handle(),
        },),
    )?;
    Ok(Awaitable(future.unbind(), PhantomData))
}

/// Spawns a task that outlives the call (a progress subscription, a started
/// engine) on the binding's runtime. RuntimeError once the interpreter is
/// exiting.
pub fn spawn<F>(fut: F) -> PyResult<tokio::task::JoinHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime_handle()
        .map(|handle| handle.spawn(fut))
        .map_err(Unavailable::into_py_err)
}

/// Runs `fut` to completion on the binding's runtime, blocking the calling
/// thread with the GIL released.
pub fn run_blocking<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    let handle = match runtime_handle() {
        Ok(handle) => handle,
        Err(Unavailable::Park) => {
            py.detach::<(), _>(|| park_forever());
            return Err(Unavailable::Park.into_py_err());
        }
        Err(other) => return Err(other.into_py_err()),
    };
    // Spawn rather than block_on so the future runs on a runtime worker even
    // if the caller is itself inside some other runtime's context.
    let outcome = py.detach(move || {
        let task = handle.spawn(mailsync::ffi::guard_async(fut));
        let outcome = futures::executor::block_on(task);
        if must_not_return() {
            // The interpreter is exiting and this is a daemon thread: the
            // task was cancelled by the shutdown, and re-attaching now would
            // race the finalizer.
            park_forever();
        }
        outcome
    });
    match outcome {
        Ok(result) => result.map_err(to_py_err),
        Err(join) => Err(to_py_err(Error::new(
            mailsync::ErrorCode::Internal,
            format!("mailsync task failed: {join}"),
        ))),
    }
}
