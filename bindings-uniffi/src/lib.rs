//! Kotlin and Swift bindings for `mailsync`, generated with UniFFI
//! (proc-macro style). See docs/kotlin-swift.md.
//!
//! This crate converts types and errors and owns the async runtime; all
//! behaviour is in the `mailsync` crate. One module per core area:
//! [`directory`] (`MailSync`), [`model`] (profiles, apps, mailboxes),
//! [`store`] (seal key), [`settings`] (`Settings`), [`oauth`] (connect,
//! tokens, disconnect), [`events`] (the host's event listener, a UniFFI
//! foreign trait), [`check`] (Test & Enable), [`error`] (the single error mapping and the panic
//! guard every entry point goes through).
//!
//! Async methods are plain `async fn`s exported with `#[uniffi::export]`
//! (Kotlin `suspend fun`, Swift `async`): each spawns its core future as a
//! task on the binding's one multi-threaded Tokio runtime (worker stacks
//! 8 MiB; see `error::guard_async`) and the host awaits the task, so no core
//! code runs on host threads (whose stacks may be small: 1 MiB on the JVM).

uniffi::setup_scaffolding!();

pub mod check;
mod convert;
pub mod directory;
pub mod error;
pub mod events;
pub mod model;
pub mod oauth;
pub mod settings;
pub mod store;

pub use directory::MailSync;
pub use error::{MailsyncError, error_codes, raise_error_for_code};
