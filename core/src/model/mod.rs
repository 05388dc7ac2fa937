//! The domain model: server profiles, the OAuth app and consent screen,
//! mailboxes, and the validation rules they follow.
//!
//! Every type round-trips through serde. Secret fields (client secret,
//! passwords) are `#[serde(skip)]` and [`Secret`] redacts itself, so a
//! serialized or debug-printed record never carries a secret; stores persist
//! secrets separately, sealed (see [`crate::store::seal`]).

pub mod app;
pub mod mailbox;
pub mod profile;
pub mod secret;
pub mod validate;

pub use app::{ApplicationType, ConsentScreen, OAuthApp, PublishingStatus, UserType, Warning};
pub use mailbox::{
    Alert, AlertLevel, ApprovalStatus, ConnectionState, IncomingDelivery, Mailbox,
    MailboxCredentials, MailboxSpec, OutgoingDelivery, Owner, TestStatus,
};
pub use profile::{
    Authentication, Endpoint, IncomingEndpoint, IncomingProtocol, LastTestResult,
    ProcessingOptions, Security, ServerProfile, ServerType,
};
pub use secret::Secret;

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id.
            pub fn new() -> Self {
                $name(uuid::Uuid::new_v4().to_string())
            }

            /// Parses an id given as text (a UUID).
            pub fn parse(value: &str) -> crate::Result<Self> {
                uuid::Uuid::parse_str(value.trim())
                    .map(|u| $name(u.to_string()))
                    .map_err(|_| crate::Error::validation("id", format!("'{value}' is not a valid id")))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// Identifies a server profile.
    ProfileId
);
id_type!(
    /// Identifies a mailbox.
    MailboxId
);

/// Outcome of a test (Dynamics `lasttestexecutionstatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestOutcome {
    /// Everything passed.
    Success,
    /// Something failed.
    Failure,
    /// Passed with something to look at.
    Warning,
}
