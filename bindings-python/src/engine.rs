//! The sync engine in both flavours (`Engine`, `EngineHandle`) and the
//! adapters that make Python objects the core's `MessageSink` and `Outbox`.
//!
//! The sink is any object with `deliver(messages)` and, optionally,
//! `tracked(mailbox_id, message_ids)` and `known_senders(mailbox_id,
//! addresses)`; each a plain or a coroutine function, called through
//! host.rs (asyncio flavour: on the event loop the engine was created on).
//! A method the object lacks (or sets to None) is the trait's default.
//! The outbox (`Engine.with_outbox`, `Engine.with_owner`) is any object with
//! `pending(mailbox_id, limit)` and `report(report)`, called the same way.
//! Progress and cycle reports reach a host callback through host.rs as
//! events do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::Shared;
use mailsync::model::MailboxId;
use mailsync::sync::{
    CycleReport, DeliveryOutcome, EngineOptions, IncomingMessage, MessageSink, Outbox,
    OutgoingMessage, SendReport, SyncStatus,
};
use mailsync::{Error, ErrorCode};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyo3_stub_gen::derive::{gen_stub_pyclass, gen_stub_pymethods};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::errors::to_py_err;
use crate::host::{self, Args};
use crate::runtime::{Awaitable, run_async, run_blocking, spawn};
use crate::sync::{Plain, Subscription, no_loop, running_loop};

type Callable = Arc<Py<PyAny>>;

/// The host's sink: its methods, bound, and the loop they run on.
struct HostSink {
    deliver: Callable,
    tracked: Option<Callable>,
    known_senders: Option<Callable>,
    event_loop: Arc<Option<Py<PyAny>>>,
}

/// The trait's defaults, for the methods a host sink does not have.
struct Defaults;

#[async_trait]
impl MessageSink for Defaults {
    async fn deliver(&self, _: Vec<IncomingMessage>) -> mailsync::Result<Vec<DeliveryOutcome>> {
        Err(Error::new(ErrorCode::Internal, "not a sink"))
    }
}

/// The host object's method `name` (`role`: "sink", "outbox"), bound;
/// `None` when it lacks it or sets it to None.
fn host_method(host: &Bound<'_, PyAny>, role: &str, name: &str) -> PyResult<Option<Callable>> {
    match host.getattr_opt(name)? {
        Some(m) if !m.is_none() => {
            if !m.is_callable() {
                return Err(PyTypeError::new_err(format!(
                    "the {role}'s `{name}` must be a method"
                )));
            }
            Ok(Some(Arc::new(m.unbind())))
        }
        _ => Ok(None),
    }
}

impl HostSink {
    fn new(sink: &Bound<'_, PyAny>, event_loop: Arc<Option<Py<PyAny>>>) -> PyResult<HostSink> {
        let method = |name: &str| host_method(sink, "sink", name);
        let deliver = method("deliver")?.ok_or_else(|| {
            PyTypeError::new_err(
                "the sink must have a deliver(messages) method returning one outcome per message",
            )
        })?;
        Ok(HostSink {
            deliver,
            tracked: method("tracked")?,
            known_senders: method("known_senders")?,
            event_loop,
        })
    }

    async fn ask(
        &self,
        method: &Callable,
        mailbox: &MailboxId,
        values: Vec<String>,
    ) -> mailsync::Result<Vec<bool>> {
        let mailbox = mailbox.clone();
        let args: Args = Box::new(move |py| (mailbox, values).into_pyobject(py));
        host::call(method.clone(), self.event_loop.clone(), args, |v| {
            v.extract()
        })
        .await
    }
}

#[async_trait]
impl MessageSink for HostSink {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        // One list of the records (moved, not copied field by field).
        let args: Args = Box::new(move |py| PyTuple::new(py, [PyList::new(py, messages)?]));
        host::call(self.deliver.clone(), self.event_loop.clone(), args, |v| {
            v.extract()
        })
        .await
    }

    async fn tracked(
        &self,
        mailbox: &MailboxId,
        message_ids: Vec<String>,
    ) -> mailsync::Result<Vec<bool>> {
        match &self.tracked {
            Some(method) => self.ask(method, mailbox, message_ids).await,
            None => Defaults.tracked(mailbox, message_ids).await,
        }
    }

    async fn known_senders(
        &self,
        mailbox: &MailboxId,
        addresses: Vec<String>,
    ) -> mailsync::Result<Vec<bool>> {
        match &self.known_senders {
            Some(method) => self.ask(method, mailbox, addresses).await,
            None => Defaults.known_senders(mailbox, addresses).await,
        }
    }
}

/// The host's outbox: its methods, bound, and the loop they run on.
struct HostOutbox {
    pending: Callable,
    report: Callable,
    event_loop: Arc<Option<Py<PyAny>>>,
}

impl HostOutbox {
    fn new(outbox: &Bound<'_, PyAny>, event_loop: Arc<Option<Py<PyAny>>>) -> PyResult<HostOutbox> {
        let method = |name: &str| {
            host_method(outbox, "outbox", name)?.ok_or_else(|| {
                PyTypeError::new_err(format!(
                    "the outbox must have pending(mailbox_id, limit) and report(report) methods; it has no `{name}`"
                ))
            })
        };
        Ok(HostOutbox {
            pending: method("pending")?,
            report: method("report")?,
            event_loop,
        })
    }
}

#[async_trait]
impl Outbox for HostOutbox {
    async fn pending(
        &self,
        mailbox: &MailboxId,
        limit: u32,
    ) -> mailsync::Result<Vec<OutgoingMessage>> {
        let mailbox = mailbox.clone();
        let args: Args = Box::new(move |py| (mailbox, limit).into_pyobject(py));
        host::call(self.pending.clone(), self.event_loop.clone(), args, |v| {
            v.extract()
        })
        .await
    }

    async fn report(&self, report: SendReport) -> mailsync::Result<()> {
        let args: Args = Box::new(move |py| PyTuple::new(py, [report]));
        // What `report` returns is not looked at.
        host::call(self.report.clone(), self.event_loop.clone(), args, |_| {
            Ok(())
        })
        .await
    }
}

/// An engine over `sync` with the host's sink, (optionally) outbox and
/// (optionally) the name its leases carry.
fn make_engine(
    sync: mailsync::MailSync,
    sink: &Bound<'_, PyAny>,
    outbox: Option<&Bound<'_, PyAny>>,
    options: EngineOptions,
    owner: Option<String>,
    event_loop: &Arc<Option<Py<PyAny>>>,
) -> PyResult<mailsync::Engine> {
    let sink = sink_of(sink, event_loop)?;
    let outbox: Option<Arc<dyn Outbox>> = match outbox {
        Some(outbox) => Some(Arc::new(HostOutbox::new(outbox, event_loop.clone())?)),
        None => None,
    };
    mailsync::ffi::guard(|| match (outbox, owner) {
        (outbox, Some(owner)) => mailsync::Engine::with_parts(sync, sink, outbox, options, owner),
        (Some(outbox), None) => mailsync::Engine::with_outbox(sync, sink, outbox, options),
        (None, None) => mailsync::Engine::new(sync, sink, options),
    })
    .map_err(to_py_err)
}

/// Calls `callback` with each value of `items` (on the engine's event loop,
/// or a runtime thread), in a task `close()` ends; the `Subscription` that
/// cancels it.
fn subscribe_callback<T>(
    items: impl futures::Stream<Item = T> + Send + 'static,
    callback: Bound<'_, PyAny>,
    takes: &str,
    event_loop: &Arc<Option<Py<PyAny>>>,
    tasks: &Mutex<Vec<AbortHandle>>,
) -> PyResult<Subscription>
where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    if !callback.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "callback must be callable (taking one {takes})"
        )));
    }
    let delivery = host::deliver_each(items, Arc::new(callback.unbind()), event_loop.clone());
    let task = spawn(delivery)?.abort_handle();
    tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(task.clone());
    Ok(Subscription(task))
}

/// Test hook: a sink written in Rust that keeps each message's bytes by
/// key, as a host store would; the yardstick for what the Python adapter
/// costs (`tests/test_engine.py`, the benchmark). Passed to `Engine` as the
/// sink, it is used directly.
#[pyclass(module = "mailsync", name = "_RustSinkForTest", frozen)]
pub struct RustSinkForTest(Arc<KeepSink>);

#[derive(Default)]
struct KeepSink(Mutex<std::collections::HashMap<String, mailsync::sync::RawMessage>>);

#[async_trait]
impl MessageSink for KeepSink {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        let n = messages.len();
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for m in messages {
            kept.insert(m.key, m.raw);
        }
        Ok(vec![DeliveryOutcome::Stored; n])
    }
}

#[pymethods]
impl RustSinkForTest {
    #[new]
    fn new() -> Self {
        RustSinkForTest(Arc::default())
    }

    /// How many messages it keeps.
    fn __len__(&self) -> usize {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The core's sink for what the host passed.
fn sink_of(
    sink: &Bound<'_, PyAny>,
    event_loop: &Arc<Option<Py<PyAny>>>,
) -> PyResult<Arc<dyn MessageSink>> {
    if let Ok(rust) = sink.cast::<RustSinkForTest>() {
        return Ok(rust.get().0.clone());
    }
    Ok(Arc::new(HostSink::new(sink, event_loop.clone())?))
}

/// A started engine, seen from Python. Dropping it (the handle was
/// garbage-collected) stops the engine as `stop()` does.
struct Running {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    stopped: Shared<oneshot::Receiver<()>>,
}

/// Starts `engine` in a task that owns the core's `EngineHandle` until told
/// to stop (or dropped); `tasks` (the MailSync's) lets `close()` abort it.
fn start(
    engine: &mailsync::Engine,
    max_idle_secs: u32,
    tasks: &Mutex<Vec<AbortHandle>>,
) -> PyResult<Running> {
    let (stop, stop_rx) = oneshot::channel::<()>();
    let (stopped_tx, stopped) = oneshot::channel::<()>();
    let engine = engine.clone();
    let task = spawn(async move {
        let _stopped = stopped_tx;
        let running = engine.start(Duration::from_secs(max_idle_secs.into()));
        // Told to stop, or the handle was garbage-collected: stop the same
        // way (also releasing the leases of cycles cut short).
        let _ = stop_rx.await;
        running.stop().await;
    })?;
    tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(task.abort_handle());
    Ok(Running {
        stop: Mutex::new(Some(stop)),
        stopped: stopped.shared(),
    })
}

impl Running {
    /// Asks the engine to stop; the future ends when it has.
    fn stop(&self) -> Shared<oneshot::Receiver<()>> {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
        self.stopped.clone()
    }
}

/// One flavour: `Engine` and `EngineHandle`.
macro_rules! flavour {
    ($module:ident, $run:ident, $out:ident, $event_loop:ident,
     $engine:literal, $handle:literal, $doc:literal, $handle_doc:literal) => {
        pub mod $module {
            use super::*;
            use crate::sync::$module::MailSync;

            #[doc = $doc]
            #[gen_stub_pyclass]
            #[pyclass(module = "mailsync", name = $engine, frozen)]
            pub struct Engine {
                inner: mailsync::Engine,
                event_loop: Arc<Option<Py<PyAny>>>,
                tasks: Arc<Mutex<Vec<AbortHandle>>>,
            }

            #[doc = $handle_doc]
            #[gen_stub_pyclass]
            #[pyclass(module = "mailsync", name = $handle, frozen)]
            pub struct EngineHandle(Running);

            #[gen_stub_pymethods]
            #[pymethods]
            impl Engine {
                /// An engine over `sync`'s mailboxes, delivering to `sink`: an
                /// object with `deliver(messages)` returning one outcome per
                /// message ("stored", "skip" or "retry_later"), and optionally
                /// `tracked(mailbox_id, message_ids)` and
                /// `known_senders(mailbox_id, addresses)` returning one bool
                /// each; plain or coroutine functions. ValidationError for bad
                /// options.
                #[new]
                fn new(
                    py: Python<'_>,
                    sync: PyRef<'_, MailSync>,
                    #[gen_stub(override_type(type_repr = "typing.Any", imports = ("typing")))]
                    sink: Bound<'_, PyAny>,
                    options: EngineOptions,
                ) -> PyResult<Self> {
                    let event_loop = Arc::new($event_loop(py)?);
                    let inner = make_engine(sync.inner.clone(), &sink, None, options, None, &event_loop)?;
                    Ok(Engine { inner, event_loop, tasks: sync.subscriptions.clone() })
                }

                /// An engine that also sends the mail of `outbox` from every
                /// mailbox whose outgoing direction is enabled: an object with
                /// `pending(mailbox_id, limit)` returning up to `limit`
                /// `OutgoingMessage`s of the mailbox, oldest first, and
                /// `report(report)` taking each `SendReport` (sent, failed,
                /// deferred, unknown); plain or coroutine functions. Keep
                /// returning a message from `pending` until it is reported
                /// sent or failed: the engine never sends it twice. `sink` as
                /// for the constructor.
                #[staticmethod]
                fn with_outbox(
                    py: Python<'_>,
                    sync: PyRef<'_, MailSync>,
                    #[gen_stub(override_type(type_repr = "typing.Any", imports = ("typing")))]
                    sink: Bound<'_, PyAny>,
                    #[gen_stub(override_type(type_repr = "typing.Any", imports = ("typing")))]
                    outbox: Bound<'_, PyAny>,
                    options: EngineOptions,
                ) -> PyResult<Self> {
                    let event_loop = Arc::new($event_loop(py)?);
                    let inner = make_engine(sync.inner.clone(), &sink, Some(&outbox), options, None, &event_loop)?;
                    Ok(Engine { inner, event_loop, tasks: sync.subscriptions.clone() })
                }

                /// An engine whose leases carry the name `owner` (e.g.
                /// `host:pid`; the others get `engine-<uuid>`), and that sends
                /// the mail of `outbox` when one is given (as `with_outbox`).
                /// Each engine must have a name of its own: two engines with one
                /// name count as one holder. ValidationError for bad options or
                /// an empty name (field `owner`). `sink` as for the constructor.
                #[staticmethod]
                #[pyo3(signature = (sync, sink, options, owner, outbox = None))]
                fn with_owner(
                    py: Python<'_>,
                    sync: PyRef<'_, MailSync>,
                    #[gen_stub(override_type(type_repr = "typing.Any", imports = ("typing")))]
                    sink: Bound<'_, PyAny>,
                    options: EngineOptions,
                    owner: String,
                    #[gen_stub(override_type(type_repr = "typing.Any", imports = ("typing")))]
                    outbox: Option<Bound<'_, PyAny>>,
                ) -> PyResult<Self> {
                    let event_loop = Arc::new($event_loop(py)?);
                    let inner = make_engine(sync.inner.clone(), &sink, outbox.as_ref(), options, Some(owner), &event_loop)?;
                    Ok(Engine { inner, event_loop, tasks: sync.subscriptions.clone() })
                }

                /// The options.
                #[getter]
                fn options(&self) -> EngineOptions {
                    self.inner.options().clone()
                }

                /// The name this engine's leases carry.
                #[getter]
                fn owner(&self) -> String {
                    self.inner.owner().to_owned()
                }

                /// Syncs one mailbox now, whatever its schedule: its incoming
                /// mail, then (with an outbox) its outgoing mail. A failed
                /// cycle is in the report (`error_code`, `outgoing_error_code`);
                /// raises only when the cycle could not start (NotEnabledError,
                /// TokenRevokedError, ...).
                fn run_once(&self, py: Python<'_>, mailbox: MailboxId) -> PyResult<$out<CycleReport>> {
                    let engine = self.inner.clone();
                    $run(py, async move { engine.run_once(&mailbox).await })
                }

                /// Syncs every mailbox that is due now, once; one report per
                /// mailbox synced.
                fn run_due(&self, py: Python<'_>) -> PyResult<$out<Vec<CycleReport>>> {
                    let engine = self.inner.clone();
                    $run(py, async move { engine.run_due().await })
                }

                /// Runs `run_due` until the handle is stopped, garbage-collected
                /// or the MailSync closed, sleeping until the next mailbox is due
                /// (at most `max_idle_secs`).
                fn start(&self, max_idle_secs: u32) -> PyResult<EngineHandle> {
                    start(&self.inner, max_idle_secs, &self.tasks).map(EngineHandle)
                }

                /// Every mailbox's sync status.
                fn status(&self, py: Python<'_>) -> PyResult<$out<Vec<SyncStatus>>> {
                    let engine = self.inner.clone();
                    $run(py, async move { engine.status().await })
                }

                /// Sends again a message of the outbox whose fate was `unknown`
                /// (or that `failed`), with the same Message-ID: its record goes
                /// back to pending, and the next outgoing cycle sends it if the
                /// outbox still returns it from `pending`. ConflictError while
                /// the mailbox's mail is being sent; ValidationError for a
                /// message that was sent (never sent twice) or is not waiting
                /// for the host; NotFoundError for an id the engine never saw.
                fn resend(&self, py: Python<'_>, mailbox: MailboxId, id: String) -> PyResult<$out<()>> {
                    let engine = self.inner.clone();
                    $run(py, async move { engine.resend(&mailbox, &id).await })
                }

                /// Starts the outgoing schedule of every mailbox that sends
                /// through server-side sync, has its outgoing direction enabled
                /// and never had an outgoing cycle, so that it is due now (an
                /// outbox-only mailbox has no incoming cycle to start it).
                /// `run_due` and `start` do this themselves; nothing without an
                /// outbox.
                fn seed_outgoing(&self, py: Python<'_>) -> PyResult<$out<()>> {
                    let engine = self.inner.clone();
                    $run(py, async move { engine.seed_outgoing().await })
                }

                /// Calls `callback(progress)` with each `SyncProgress` of the
                /// cycles that run from now on, one at a time (a callback that
                /// falls behind skips values); like `MailSync.subscribe`. Ends
                /// with `cancel()` or when the MailSync is closed.
                fn progress(
                    &self,
                    #[gen_stub(override_type(type_repr = "typing.Callable[[SyncProgress], typing.Any]", imports = ("typing")))]
                    callback: Bound<'_, PyAny>,
                ) -> PyResult<Subscription> {
                    let items = mailsync::ffi::broadcast_stream(self.inner.progress());
                    subscribe_callback(items, callback, "SyncProgress", &self.event_loop, &self.tasks)
                }

                /// Calls `callback(report)` with the `CycleReport` of every cycle
                /// this engine ends from now on (`run_once`, `run_due` and the
                /// cycles of `start`, which hands out no reports otherwise), one
                /// at a time (a callback that falls behind skips reports); like
                /// `progress`. Ends with `cancel()` or when the MailSync is closed.
                fn reports(
                    &self,
                    #[gen_stub(override_type(type_repr = "typing.Callable[[CycleReport], typing.Any]", imports = ("typing")))]
                    callback: Bound<'_, PyAny>,
                ) -> PyResult<Subscription> {
                    let items = mailsync::ffi::broadcast_stream(self.inner.reports());
                    subscribe_callback(items, callback, "CycleReport", &self.event_loop, &self.tasks)
                }

                fn __repr__(&self) -> String {
                    format!("{:?}", self.inner)
                }
            }

            #[gen_stub_pymethods]
            #[pymethods]
            impl EngineHandle {
                /// Stops the engine and waits until it stopped (idempotent). A
                /// cycle stopped mid-batch does not move the cursor.
                fn stop(&self, py: Python<'_>) -> PyResult<$out<()>> {
                    let stopped = self.0.stop();
                    $run(py, async move {
                        let _ = stopped.await;
                        Ok(())
                    })
                }
            }
        }
    };
}

flavour!(
    aio,
    run_async,
    Awaitable,
    running_loop,
    "Engine",
    "EngineHandle",
    "The sync engine (asyncio): new mail of each enabled mailbox into the host's sink. Create it inside a running event loop: the sink's and outbox's methods and the progress and reports callbacks run on that loop.",
    "A started engine (`Engine.start`): `await handle.stop()`. Dropping the last reference stops it too."
);
flavour!(
    blocking,
    run_blocking,
    Plain,
    no_loop,
    "BlockingEngine",
    "BlockingEngineHandle",
    "The blocking twin of `Engine` (`mailsync.blocking.Engine`): the same methods as plain calls. The sink's and outbox's methods and the progress and reports callbacks run on a runtime thread (a coroutine they return is run with `asyncio.run`).",
    "A started engine (`BlockingEngine.start`): `handle.stop()`. Dropping the last reference stops it too."
);
