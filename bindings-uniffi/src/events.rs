//! Connection events pushed to the host: the foreign trait
//! [`MailboxEventListener`] (a Kotlin interface / Swift protocol the host
//! implements) and the adapter that plugs it into the core's listener.

use std::sync::Arc;
use std::time::SystemTime;

use crate::convert::{mirror_enum, to_system_time};
use crate::error::MailsyncError;

mirror_enum! {
    /// What happened to a mailbox's connection (serde: `connected`,
    /// `refreshed`, `needs_reconsent`, `disconnected`).
    MailboxEventKind => mailsync::oauth::MailboxEventKind {
        /// Consent completed; tokens are stored.
        Connected,
        /// The access token was refreshed.
        Refreshed,
        /// The grant stopped working; the owner must consent again.
        NeedsReconsent,
        /// The mailbox was disconnected (tokens revoked and deleted).
        Disconnected,
    }
}

/// One connection event. Never carries a secret.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct MailboxEvent {
    /// What happened.
    pub kind: MailboxEventKind,
    /// The mailbox id.
    pub mailbox_id: String,
    /// Its address.
    pub email: String,
    /// The error code behind the event (e.g. `token_revoked`), if any.
    pub code: Option<String>,
    /// What happened and what to do, for people.
    pub message: String,
    /// When.
    pub at: SystemTime,
}

impl From<&mailsync::oauth::MailboxEvent> for MailboxEvent {
    fn from(e: &mailsync::oauth::MailboxEvent) -> Self {
        MailboxEvent {
            kind: e.kind.into(),
            mailbox_id: e.mailbox_id.to_string(),
            email: e.email.clone(),
            code: e.code.clone(),
            message: e.message.clone(),
            at: to_system_time(e.at),
        }
    }
}

/// Receives connection events. Implement it in the host (Kotlin interface,
/// Swift protocol) and pass it to `Settings.withEventListener` or
/// `MailSync.setEventListener`.
///
/// Called synchronously on the library thread that caused the event, in the
/// middle of the operation (e.g. `completeConnect`): keep it quick (queue the
/// work). An exception thrown by the host is caught and the event dropped;
/// it never reaches the operation that caused the event nor the library.
#[uniffi::export(with_foreign)]
pub trait MailboxEventListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: MailboxEvent) -> Result<(), MailsyncError>;
}

/// The core listener that forwards to the host's listener.
pub(crate) struct HostListener(pub(crate) Arc<dyn MailboxEventListener>);

impl mailsync::oauth::MailboxEventListener for HostListener {
    fn on_event(&self, event: &mailsync::oauth::MailboxEvent) {
        let event = MailboxEvent::from(event);
        // A host exception arrives as Err (UniFFI maps unexpected foreign
        // exceptions through `From<UnexpectedUniFFICallbackError>`); a panic
        // is caught here too. Either way the event is dropped, nothing else.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.on_event(event)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!(
                    code = err.code(),
                    "the host event listener failed; event dropped"
                )
            }
            Err(_) => tracing::error!("the host event listener panicked; event dropped"),
        }
    }
}

pub(crate) fn adapt(
    listener: Option<Arc<dyn MailboxEventListener>>,
) -> Option<Arc<dyn mailsync::oauth::MailboxEventListener>> {
    listener.map(|l| Arc::new(HostListener(l)) as Arc<dyn mailsync::oauth::MailboxEventListener>)
}
