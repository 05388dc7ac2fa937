//! The sync engine ([`Engine`], [`EngineHandle`]) and the adapters that make
//! JavaScript objects the core's `MessageSink` and `Outbox`.
//!
//! The sink is any object with `deliver(messages)` and, optionally,
//! `tracked(mailboxId, messageIds)` and `knownSenders(mailboxId, addresses)`,
//! each a plain or an async function, called with the object as `this`. A
//! method the object lacks is the trait's default. Each method becomes a
//! weak `ThreadsafeFunction`: the engine's task queues the call to the
//! JavaScript thread and awaits the answer — what the method returned, or
//! what its promise resolved with. A throw, a rejection or an answer of the
//! wrong shape becomes a core error there, so the engine ends the cycle with
//! `sink_failed` and does not move the cursor. A batch crosses as one array
//! of `IncomingMessage` objects whose `raw` is a `Buffer` over the Rust bytes
//! (not copied).
//!
//! The outbox (`Engine.withOutbox`, `Engine.withOwner`) is an object with `pending(mailboxId,
//! limit)` and `report(report)`, adapted the same way: a throw, a rejection
//! or a wrong answer of `pending` fails the outgoing cycle with
//! `sink_failed` (nothing is sent); one of `report` is kept by the engine,
//! which reports the message again in the next cycle.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use mailsync::model::MailboxId;
use mailsync::sync::{
    CycleReport, DeliveryOutcome, EngineOptions, IncomingMessage, MessageSink, Outbox,
    OutgoingMessage, SendReport, SyncProgress, SyncStatus,
};
use mailsync::{Error, ErrorCode};
use napi::bindgen_prelude::{
    CallbackContext, ClassInstance, FnArgs, FromNapiValue, Function, JsObjectValue, JsValue,
    JsValuesTupleIntoVec, Object, PromiseRaw, ToNapiValue, Unknown,
};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status, ValueType, sys};
use napi_derive::napi;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::AbortHandle;

use super::{
    Listener, MailSync, Signature, Subscription, check, check_function, notify, promise, statics,
    sync_call, to_napi, track,
};

/// The argument checks of the engine's constructor and methods (`src/init.js`).
pub(super) const SIGNATURES: &[Signature] = &[
    Signature {
        name: "Engine.new",
        params: &[
            ("sync", check_mail_sync),
            ("sink", check_sink),
            ("options", check::<Option<EngineOptions>>),
        ],
        is_async: false,
    },
    Signature {
        name: "Engine.with_outbox",
        params: &[
            ("sync", check_mail_sync),
            ("sink", check_sink),
            ("outbox", check_outbox),
            ("options", check::<Option<EngineOptions>>),
        ],
        is_async: false,
    },
    Signature {
        name: "Engine.with_owner",
        params: &[
            ("sync", check_mail_sync),
            ("sink", check_sink),
            ("options", check::<Option<EngineOptions>>),
            ("owner", check::<String>),
            ("outbox", check_optional_outbox),
        ],
        is_async: false,
    },
    Signature {
        name: "Engine.run_once",
        params: &[("mailbox", check::<MailboxId>)],
        is_async: true,
    },
    Signature {
        name: "Engine.resend",
        params: &[("mailbox", check::<MailboxId>), ("id", check::<String>)],
        is_async: true,
    },
    Signature {
        name: "Engine.start",
        params: &[("max_idle_secs", check::<u32>)],
        is_async: false,
    },
    Signature {
        name: "Engine.progress",
        params: &[("listener", check_function)],
        is_async: false,
    },
    Signature {
        name: "Engine.reports",
        params: &[("listener", check_function)],
        is_async: false,
    },
];

// ---------------------------------------------------------------------------
// The sink adapter.

/// A method of the host's sink: weak (it never keeps the process alive),
/// called with its arguments only.
type HostMethod<A> = ThreadsafeFunction<A, Unknown<'static>, A, Status, false, true>;

/// `tracked(mailboxId, messageIds)` / `knownSenders(mailboxId, addresses)`.
type Question = FnArgs<(MailboxId, Vec<String>)>;

/// `pending(mailboxId, limit)`.
type PendingArgs = FnArgs<(MailboxId, u32)>;

/// A host object's method: the object's role and interface, the method's
/// JavaScript name and what it must answer.
struct Method {
    role: &'static str,
    interface: &'static str,
    name: &'static str,
    answer: &'static str,
}

const DELIVER: Method = Method {
    role: "sink",
    interface: "MessageSink",
    name: "deliver",
    answer: "one outcome per message ('stored', 'skip' or 'retry_later')",
};
const TRACKED: Method = Method {
    role: "sink",
    interface: "MessageSink",
    name: "tracked",
    answer: "one boolean per message id",
};
const KNOWN_SENDERS: Method = Method {
    role: "sink",
    interface: "MessageSink",
    name: "knownSenders",
    answer: "one boolean per address",
};
const PENDING: Method = Method {
    role: "outbox",
    interface: "Outbox",
    name: "pending",
    answer: "an array of OutgoingMessage objects",
};
const REPORT: Method = Method {
    role: "outbox",
    interface: "Outbox",
    name: "report",
    answer: "anything (its value is not used)",
};

/// The host's sink: its methods, bound to it.
struct HostSink {
    deliver: HostMethod<Vec<IncomingMessage>>,
    tracked: Option<HostMethod<Question>>,
    known_senders: Option<HostMethod<Question>>,
}

/// The trait's defaults, for the methods a host sink does not have.
struct Defaults;

#[async_trait]
impl MessageSink for Defaults {
    async fn deliver(&self, _: Vec<IncomingMessage>) -> mailsync::Result<Vec<DeliveryOutcome>> {
        Err(Error::new(ErrorCode::Internal, "not a sink"))
    }
}

/// The host object's method `name`: `None` when it is missing and
/// `optional`; an error message in napi's form (`… on Struct.field`, which
/// `src/init.js` turns into the field `sink.<name>`) when it is not a function.
fn sink_method<'env, A: JsValuesTupleIntoVec>(
    sink: &Object<'env>,
    method: &Method,
    optional: bool,
) -> napi::Result<Option<Function<'env, A, Unknown<'static>>>> {
    let value: Unknown = sink.get_named_property(method.name)?;
    match value.get_type()? {
        ValueType::Undefined | ValueType::Null if optional => Ok(None),
        // SAFETY: a function of this environment, just checked.
        ValueType::Function => Ok(Some(unsafe {
            Function::from_napi_value(value.value().env, value.raw())?
        })),
        _ => Err(napi::Error::new(
            Status::InvalidArg,
            format!("must be a function on {}.{}", method.interface, method.name),
        )),
    }
}

/// Checks that a value is a [`MailSync`] (napi's message would name the Rust type).
unsafe fn check_mail_sync(env: sys::napi_env, value: sys::napi_value) -> napi::Result<()> {
    // SAFETY: called by `init`'s checker with the live env and a value of it.
    match unsafe { ClassInstance::<MailSync>::from_napi_value(env, value) } {
        Ok(_) => Ok(()),
        Err(_) => Err(napi::Error::new(
            Status::InvalidArg,
            "must be a MailSync (from MailSync.open)".to_owned(),
        )),
    }
}

/// Checks a sink argument as the constructor reads it.
unsafe fn check_sink(env: sys::napi_env, value: sys::napi_value) -> napi::Result<()> {
    // SAFETY: called by `init`'s checker with the live env and a value of it.
    let value = unsafe { Unknown::from_raw_unchecked(env, value) };
    if value.get_type()? != ValueType::Object {
        return Err(napi::Error::new(
            Status::ObjectExpected,
            "must be an object with a deliver(messages) method".to_owned(),
        ));
    }
    // SAFETY: a value of this environment.
    if unsafe { ClassInstance::<RustSinkForTest>::from_napi_value(env, value.raw()) }.is_ok() {
        return Ok(());
    }
    // SAFETY: an object of this environment, just checked.
    let sink = unsafe { Object::from_napi_value(env, value.raw()) }?;
    sink_method::<Vec<IncomingMessage>>(&sink, &DELIVER, false)?;
    sink_method::<Question>(&sink, &TRACKED, true)?;
    sink_method::<Question>(&sink, &KNOWN_SENDERS, true)?;
    Ok(())
}

/// Checks an outbox argument as `Engine.withOutbox` reads it.
unsafe fn check_outbox(env: sys::napi_env, value: sys::napi_value) -> napi::Result<()> {
    // SAFETY: called by `init`'s checker with the live env and a value of it.
    let value = unsafe { Unknown::from_raw_unchecked(env, value) };
    if value.get_type()? != ValueType::Object {
        return Err(napi::Error::new(
            Status::ObjectExpected,
            "must be an object with pending(mailboxId, limit) and report(report) methods"
                .to_owned(),
        ));
    }
    // SAFETY: an object of this environment, just checked.
    let outbox = unsafe { Object::from_napi_value(env, value.raw()) }?;
    sink_method::<PendingArgs>(&outbox, &PENDING, false)?;
    sink_method::<SendReport>(&outbox, &REPORT, false)?;
    Ok(())
}

/// Checks an optional outbox argument (`Engine.withOwner`): absent, or as
/// [`check_outbox`].
unsafe fn check_optional_outbox(env: sys::napi_env, value: sys::napi_value) -> napi::Result<()> {
    // SAFETY: called by `init`'s checker with the live env and a value of it.
    let kind = unsafe { Unknown::from_raw_unchecked(env, value) }.get_type()?;
    match kind {
        ValueType::Undefined | ValueType::Null => Ok(()),
        // SAFETY: as above.
        _ => unsafe { check_outbox(env, value) },
    }
}

/// The host object's method, bound to it as a weak threadsafe function.
fn bound<A: JsValuesTupleIntoVec + 'static>(
    host: &Object,
    method: &Method,
    optional: bool,
) -> napi::Result<Option<HostMethod<A>>> {
    let Some(function) = sink_method::<A>(host, method, optional)? else {
        return Ok(None);
    };
    let tsfn = function
        .bind(host)?
        .build_threadsafe_function()
        .weak::<true>()
        .callee_handled::<false>()
        .build()?;
    Ok(Some(tsfn))
}

impl HostSink {
    fn new(sink: &Object) -> napi::Result<HostSink> {
        let deliver = bound(sink, &DELIVER, false)?
            .ok_or_else(|| napi::Error::from_reason("the sink has no deliver method"))?;
        Ok(HostSink {
            deliver,
            tracked: bound(sink, &TRACKED, true)?,
            known_senders: bound(sink, &KNOWN_SENDERS, true)?,
        })
    }
}

#[async_trait]
impl MessageSink for HostSink {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        ask(&self.deliver, &DELIVER, messages).await
    }

    async fn tracked(
        &self,
        mailbox: &MailboxId,
        message_ids: Vec<String>,
    ) -> mailsync::Result<Vec<bool>> {
        match &self.tracked {
            Some(method) => ask(method, &TRACKED, (mailbox.clone(), message_ids).into()).await,
            None => Defaults.tracked(mailbox, message_ids).await,
        }
    }

    async fn known_senders(
        &self,
        mailbox: &MailboxId,
        addresses: Vec<String>,
    ) -> mailsync::Result<Vec<bool>> {
        match &self.known_senders {
            Some(method) => ask(method, &KNOWN_SENDERS, (mailbox.clone(), addresses).into()).await,
            None => Defaults.known_senders(mailbox, addresses).await,
        }
    }
}

/// The host's outbox: its methods, bound to it.
struct HostOutbox {
    pending: HostMethod<PendingArgs>,
    report: HostMethod<SendReport>,
}

impl HostOutbox {
    fn new(outbox: &Object) -> napi::Result<HostOutbox> {
        let missing =
            |m: &Method| napi::Error::from_reason(format!("the outbox has no {} method", m.name));
        Ok(HostOutbox {
            pending: bound(outbox, &PENDING, false)?.ok_or_else(|| missing(&PENDING))?,
            report: bound(outbox, &REPORT, false)?.ok_or_else(|| missing(&REPORT))?,
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
        ask(&self.pending, &PENDING, (mailbox.clone(), limit).into()).await
    }

    async fn report(&self, report: SendReport) -> mailsync::Result<()> {
        ask::<_, Ignored>(&self.report, &REPORT, report)
            .await
            .map(drop)
    }
}

/// Any answer, not looked at (`report`'s).
struct Ignored;

impl FromNapiValue for Ignored {
    unsafe fn from_napi_value(_: sys::napi_env, _: sys::napi_value) -> napi::Result<Self> {
        Ok(Ignored)
    }
}

/// Where the answer of one call goes (to the engine's task).
type Reply<T> = oneshot::Sender<mailsync::Result<T>>;

/// Calls a sink method on the JavaScript thread and awaits its answer.
async fn ask<A: JsValuesTupleIntoVec + 'static, T: FromNapiValue + Send + 'static>(
    host: &HostMethod<A>,
    method: &'static Method,
    args: A,
) -> mailsync::Result<T> {
    let (reply, answer) = oneshot::channel();
    let status = host.call_with_return_value(
        args,
        ThreadsafeFunctionCallMode::NonBlocking,
        // Never an error from here: napi would make it an uncaught exception.
        move |returned, env| {
            settle(&env, method, returned, reply);
            Ok(())
        },
    );
    if status != Status::Ok {
        return Err(Error::new(
            ErrorCode::SinkFailed,
            format!(
                "the {}'s {} could not be called: Node.js is shutting down",
                method.role, method.name
            ),
        ));
    }
    answer.await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorCode::SinkFailed,
            format!(
                "the {}'s {} gave no answer: its promise was collected unsettled, or Node.js is shutting down",
                method.role, method.name
            ),
        ))
    })
}

/// On the JavaScript thread, with what the method returned: the answer, or
/// (for a promise) the answer once it settles.
fn settle<T: FromNapiValue + 'static>(
    env: &Env,
    method: &'static Method,
    returned: napi::Result<Unknown<'static>>,
    reply: Reply<T>,
) {
    let value = match returned {
        Err(thrown) => {
            // SAFETY: `env` is the live environment of this callback.
            let thrown = unsafe { napi::Error::to_napi_value(env.raw(), thrown) };
            let _ = reply.send(Err(failure(env, method, thrown)));
            return;
        }
        Ok(value) => value,
    };
    if !value.is_promise().unwrap_or(false) {
        let _ = reply.send(answer(env, method, value.raw()));
        return;
    }
    // Both callbacks run on this thread; the first to run answers.
    let on_value = Rc::new(Cell::new(Some(reply)));
    let on_failure = on_value.clone();
    // SAFETY: `value` was just checked to be a promise of this `env`.
    let attached =
        unsafe { PromiseRaw::<Unknown<'static>>::from_napi_value(env.raw(), value.raw()) }
            .and_then(|promise| {
                promise.then(move |ctx: CallbackContext<Unknown<'static>>| {
                    if let Some(reply) = on_value.take() {
                        let _ = reply.send(answer(&ctx.env, method, ctx.value.raw()));
                    }
                    Ok(())
                })
            })
            .and_then(|promise| {
                promise.catch(move |ctx: CallbackContext<Unknown<'static>>| {
                    if let Some(reply) = on_failure.take() {
                        let _ = reply.send(Err(failure(&ctx.env, method, Ok(ctx.value.raw()))));
                    }
                    Ok(())
                })
            });
    // If the callbacks could not be attached they were dropped with the
    // reply, and `ask` reports the call as not made.
    drop(attached);
}

/// The method's answer converted, or why it is not one.
fn answer<T: FromNapiValue>(
    env: &Env,
    method: &Method,
    value: sys::napi_value,
) -> mailsync::Result<T> {
    // SAFETY: a value of this live environment, on its thread.
    unsafe { T::from_napi_value(env.raw(), value) }.map_err(|e| {
        Error::new(
            ErrorCode::SinkFailed,
            format!(
                "the {}'s {} must return {}: {}",
                method.role, method.name, method.answer, e.reason
            ),
        )
    })
}

/// What the method threw (or its promise rejected with) as a core error:
/// `src/init.js`'s `describe` keeps a `MailsyncError`'s code, anything else
/// is `sink_failed`.
fn failure(env: &Env, method: &Method, thrown: napi::Result<sys::napi_value>) -> Error {
    let described = thrown.and_then(|thrown| {
        // SAFETY: `thrown` is a value of this live environment, on its thread.
        let thrown = unsafe { Unknown::from_raw_unchecked(env.raw(), thrown) };
        statics(env)?.describe.borrow_back(env)?.call(thrown)
    });
    match described.as_deref() {
        Ok([code, message]) => Error::new(
            ErrorCode::parse(code).unwrap_or(ErrorCode::SinkFailed),
            message.clone(),
        ),
        _ => Error::new(
            ErrorCode::SinkFailed,
            format!("the {}'s {} failed", method.role, method.name),
        ),
    }
}

// ---------------------------------------------------------------------------
// The classes.

impl Engine {
    /// An engine over `sync` with the host's sink and, optionally, outbox
    /// and the name its leases carry.
    fn make(
        env: Env,
        sync: &MailSync,
        sink: Object,
        outbox: Option<Object>,
        options: Option<EngineOptions>,
        owner: Option<String>,
    ) -> napi::Result<Self> {
        // SAFETY: a value of this environment.
        let sink: Arc<dyn MessageSink> = match unsafe {
            ClassInstance::<RustSinkForTest>::from_napi_value(env.raw(), sink.raw())
        } {
            Ok(rust) => rust.0.clone(),
            Err(_) => Arc::new(
                HostSink::new(&sink)
                    .map_err(|e| to_napi(&env, &Error::validation("sink", e.reason.clone())))?,
            ),
        };
        let outbox: Option<Arc<dyn Outbox>> = match outbox {
            Some(outbox) => Some(Arc::new(HostOutbox::new(&outbox).map_err(|e| {
                to_napi(&env, &Error::validation("outbox", e.reason.clone()))
            })?)),
            None => None,
        };
        let inner = sync_call(&env, || {
            let (sync, options) = (sync.inner.clone(), options.unwrap_or_default());
            match (outbox, owner) {
                (outbox, Some(owner)) => {
                    mailsync::Engine::with_parts(sync, sink, outbox, options, owner)
                }
                (Some(outbox), None) => mailsync::Engine::with_outbox(sync, sink, outbox, options),
                (None, None) => mailsync::Engine::new(sync, sink, options),
            }
        })?;
        Ok(Engine {
            inner,
            tasks: sync.subscriptions.clone(),
        })
    }
}

/// The sync engine: new mail of each enabled mailbox into the host's sink
/// (and, made with `Engine.withOutbox`, the host's outbox sent out).
#[napi]
pub struct Engine {
    inner: mailsync::Engine,
    /// The [`MailSync`]'s tasks: closing it ends progress subscriptions and
    /// started engines.
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

#[napi]
impl Engine {
    /// An engine over `sync`'s mailboxes, delivering to `sink`: an object
    /// with `deliver(messages)` returning one outcome per message
    /// (`'stored'`, `'skip'` or `'retry_later'`), and optionally
    /// `tracked(mailboxId, messageIds)` and `knownSenders(mailboxId,
    /// addresses)` returning one boolean each; plain or async functions.
    /// `options` defaults to `defaultEngineOptions()`; bad values are
    /// `validation` naming the field.
    #[napi(
        constructor,
        ts_args_type = "sync: MailSync, sink: MessageSink, options?: EngineOptions | undefined | null"
    )]
    pub fn new(
        env: Env,
        sync: &MailSync,
        sink: Object,
        options: Option<EngineOptions>,
    ) -> napi::Result<Self> {
        Engine::make(env, sync, sink, None, options, None)
    }

    /// An engine that also sends the mail of `outbox` from every mailbox
    /// whose outgoing direction is enabled: an object with
    /// `pending(mailboxId, limit)` returning up to `limit`
    /// `OutgoingMessage`s of the mailbox, oldest first, and `report(report)`
    /// taking each `SendReport` (`sent`, `failed`, `deferred`, `unknown`);
    /// plain or async functions. Keep returning a message from `pending`
    /// until it is reported sent or failed: the engine never sends it twice.
    /// `sink` and `options` as for the constructor.
    // A static method, not a `factory`: a factory constructs through `this`,
    // which is `src/init.js`'s Proxy of the class (whose construct trap would
    // check these arguments as the constructor's).
    #[napi(
        configurable = true,
        ts_args_type = "sync: MailSync, sink: MessageSink, outbox: Outbox, options?: EngineOptions | undefined | null"
    )]
    pub fn with_outbox(
        env: Env,
        sync: &MailSync,
        sink: Object,
        outbox: Object,
        options: Option<EngineOptions>,
    ) -> napi::Result<Self> {
        Engine::make(env, sync, sink, Some(outbox), options, None)
    }

    /// An engine whose leases carry the name `owner` (e.g. `host:pid`; the
    /// others get `engine-<uuid>`), and that sends the mail of `outbox` when
    /// one is given (as `Engine.withOutbox`). Each engine must have a name of
    /// its own: two engines with one name count as one holder. `validation`
    /// for bad options or an empty name (field `owner`). `sink` and
    /// `options` as for the constructor (`null`: the defaults).
    #[napi(
        configurable = true,
        ts_args_type = "sync: MailSync, sink: MessageSink, options: EngineOptions | undefined | null, owner: string, outbox?: Outbox | undefined | null"
    )]
    pub fn with_owner(
        env: Env,
        sync: &MailSync,
        sink: Object,
        options: Option<EngineOptions>,
        owner: String,
        outbox: Option<Object>,
    ) -> napi::Result<Self> {
        Engine::make(env, sync, sink, outbox, options, Some(owner))
    }

    /// The options.
    #[napi(getter)]
    pub fn options(&self) -> EngineOptions {
        self.inner.options().clone()
    }

    /// The name this engine's leases carry.
    #[napi(getter)]
    pub fn owner(&self) -> String {
        self.inner.owner().to_owned()
    }

    /// Syncs one mailbox now, whatever its schedule: its incoming mail,
    /// then (with an outbox) its outgoing mail. A failed cycle is in the
    /// report (`errorCode`, e.g. `sink_failed`; `outgoingErrorCode`);
    /// rejects only when the cycle could not start (`not_enabled`,
    /// `token_revoked`, `conflict`, …).
    #[napi]
    pub fn run_once<'env>(
        &self,
        env: &'env Env,
        mailbox: MailboxId,
    ) -> napi::Result<PromiseRaw<'env, CycleReport>> {
        let engine = self.inner.clone();
        promise(env, async move { engine.run_once(&mailbox).await })
    }

    /// Syncs every mailbox that is due now, once; one report per mailbox synced.
    #[napi]
    pub fn run_due<'env>(
        &self,
        env: &'env Env,
    ) -> napi::Result<PromiseRaw<'env, Vec<CycleReport>>> {
        let engine = self.inner.clone();
        promise(env, async move { engine.run_due().await })
    }

    /// Every mailbox's sync status.
    #[napi]
    pub fn status<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, Vec<SyncStatus>>> {
        let engine = self.inner.clone();
        promise(env, async move { engine.status().await })
    }

    /// Sends again a message of the outbox whose fate was `unknown` (or that
    /// `failed`), with the same Message-ID: its record goes back to pending,
    /// and the next outgoing cycle sends it if the outbox still returns it
    /// from `pending`. Rejects with `conflict` while the mailbox's mail is
    /// being sent, `validation` for a message that was sent (never sent
    /// twice) or is not waiting for the host, `not_found` for an id the
    /// engine never saw.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn resend<'env>(
        &self,
        env: &'env Env,
        mailbox: MailboxId,
        id: String,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let engine = self.inner.clone();
        promise(env, async move { engine.resend(&mailbox, &id).await })
    }

    /// Starts the outgoing schedule of every mailbox that sends through
    /// server-side sync, has its outgoing direction enabled and never had an
    /// outgoing cycle, so that it is due now (an outbox-only mailbox has no
    /// incoming cycle to start it). `runDue` and `start` do this themselves;
    /// nothing without an outbox.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn seed_outgoing<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let engine = self.inner.clone();
        promise(env, async move { engine.seed_outgoing().await })
    }

    /// Runs `runDue` until the handle is stopped or the `MailSync` closed,
    /// sleeping until the next mailbox is due (at most `maxIdleSecs`). A
    /// started engine keeps the process alive, like a listening server.
    #[napi]
    pub fn start(&self, env: &Env, max_idle_secs: u32) -> napi::Result<EngineHandle> {
        let keep_alive: Function<(), ()> =
            env.create_function_from_closure("mailsyncEngine", |_| Ok(()))?;
        let keep_alive = keep_alive
            .build_threadsafe_function::<()>()
            .callee_handled::<false>()
            .build()?;
        let (stop, stop_requested) = oneshot::channel::<()>();
        let (running, stopped) = watch::channel(());
        let engine = self.inner.clone();
        let task = napi::bindgen_prelude::spawn(async move {
            // Both go when this task ends (stopped, or aborted by `close()`).
            let _keep_alive = keep_alive;
            let _running = running;
            let started = engine.start(Duration::from_secs(max_idle_secs.into()));
            if stop_requested.await.is_ok() {
                started.stop().await;
            } else {
                // The handle was garbage-collected: run until `close()`.
                std::future::pending::<()>().await;
            }
        });
        // `close()` ends it (its keep-alive goes with it).
        track(&self.tasks, &task.abort_handle());
        Ok(EngineHandle {
            stop: Mutex::new(Some(stop)),
            stopped,
        })
    }

    /// Calls `listener(progress)` on the JavaScript thread with each
    /// `SyncProgress` of the cycles that run from now on (a listener that
    /// falls behind skips values); like `MailSync.subscribe`: weak, a throw
    /// or rejection is a `MailsyncListenerWarning`. Ends with `cancel()` or
    /// when the `MailSync` is closed.
    #[napi(ts_args_type = "listener: (progress: SyncProgress) => unknown")]
    pub fn progress(&self, listener: Listener<SyncProgress>) -> Subscription {
        self.listen(self.inner.progress(), listener)
    }

    /// Calls `listener(report)` on the JavaScript thread with the
    /// `CycleReport` of every cycle this engine ends from now on (`runOnce`,
    /// `runDue` and the cycles of `start`, which hands out no reports
    /// otherwise; a listener that falls behind skips reports); like
    /// `progress`. Ends with `cancel()` or when the `MailSync` is closed.
    #[napi(ts_args_type = "listener: (report: CycleReport) => unknown")]
    pub fn reports(&self, listener: Listener<CycleReport>) -> Subscription {
        self.listen(self.inner.reports(), listener)
    }
}

impl Engine {
    /// Queues each value of a broadcast to `listener` (as events are), in a
    /// task that `cancel()` or closing the `MailSync` ends.
    fn listen<T: Clone + Send + ToNapiValue + 'static>(
        &self,
        values: broadcast::Receiver<T>,
        listener: Listener<T>,
    ) -> Subscription {
        let task = napi::bindgen_prelude::spawn(async move {
            let mut values = std::pin::pin!(mailsync::ffi::broadcast_stream(values));
            while let Some(value) = values.next().await {
                if !notify(&listener, value) {
                    break; // the environment is gone
                }
            }
        });
        let handle = task.abort_handle();
        track(&self.tasks, &handle);
        Subscription(Mutex::new(Some(handle)))
    }
}

/// A started engine (`engine.start(maxIdleSecs)`): `await handle.stop()`.
#[napi]
pub struct EngineHandle {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// Closed when the engine's task ended.
    stopped: watch::Receiver<()>,
}

#[napi]
impl EngineHandle {
    /// Stops the engine; resolves once it stopped (idempotent). A cycle
    /// stopped mid-batch does not move the cursor: its batch comes again.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn stop<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
        let mut stopped = self.stopped.clone();
        promise(env, async move {
            while stopped.changed().await.is_ok() {}
            Ok(())
        })
    }
}

/// Not part of the API: a sink written in Rust that keeps each message's
/// bytes by key, as a host store would; the yardstick for what the
/// JavaScript adapter costs (`tests/engine-bench.test.js`). Passed to
/// `Engine` as the sink, it is used directly.
#[napi]
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

#[napi]
impl RustSinkForTest {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        RustSinkForTest(Arc::default())
    }

    /// How many messages it keeps.
    #[napi(getter)]
    pub fn size(&self) -> u32 {
        let kept = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        u32::try_from(kept.len()).unwrap_or(u32::MAX)
    }
}

/// The engine's defaults (`EngineOptions::default()`), to change fields of.
#[napi]
pub fn default_engine_options() -> EngineOptions {
    EngineOptions::default()
}
