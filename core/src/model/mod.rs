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
pub mod timestamp;
pub mod validate;
pub use timestamp::Timestamp;

pub use app::{ApplicationType, ConsentScreen, OAuthApp, PublishingStatus, UserType, Warning};
pub use mailbox::{
    Alert, AlertLevel, ApprovalStatus, IncomingDelivery, IncomingFilter, Mailbox,
    MailboxCredentials, MailboxSpec, OutgoingDelivery, Owner,
};
pub use profile::{
    Authentication, Endpoint, GOOGLE_MAIL_HOSTS, IncomingEndpoint, IncomingProtocol,
    LastTestResult, ProcessingOptions, Security, ServerProfile, ServerType, profile_name_key,
};
pub use secret::{BearerToken, Secret};

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

            /// An id from a host language, unchecked: an id that is not
            /// one of ours simply finds nothing (`not_found`).
            #[cfg(any(feature = "uniffi", feature = "napi", feature = "python"))]
            pub(crate) fn from_host(value: String) -> Self {
                $name(value)
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
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
pub enum TestOutcome {
    /// Everything passed.
    Success,
    /// Something failed.
    Failure,
    /// Passed with something to look at.
    Warning,
}
