//! Mirror types of `mailsync::model`. Types that can hold a secret (OAuth
//! app, authentication, profile, mailbox, mailbox spec) are objects wrapping
//! the core value, so the secret never lands in a Kotlin data class or Swift
//! struct; everything else is a record or enum.

pub mod app;
pub mod mailbox;
pub mod profile;

pub use app::*;
pub use mailbox::*;
pub use profile::*;
