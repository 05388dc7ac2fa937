//! UniFFI (Kotlin, Swift): custom types and the error type.
//!
//! Ids are strings, [`Timestamp`] is the platform's instant (Kotlin
//! `java.time.Instant`, Swift `Date`; one beyond the years ±9999 is a
//! `validation` error). A [`Secret`] and a [`BearerToken`] are a
//! [`SecretValue`]: an opaque handle whose secret stays in Rust, so a record
//! made by a preset (`googleApp(id, secret)`) or read from mailsync can be
//! passed back with its secret although the host never sees it.
//! Every failure is a [`MailsyncError`], one variant per code of
//! [`crate::ErrorCode`] (a sealed exception class in Kotlin).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use crate::MailsyncError;
use crate::error::Error;
use crate::model::{BearerToken, MailboxId, ProfileId, Secret, Timestamp};
use crate::sync::RawMessage;

uniffi::custom_type!(MailboxId, String, {
    lower: |id| id.as_str().to_owned(),
    try_lift: |s| Ok(MailboxId::from_host(s)),
});

uniffi::custom_type!(ProfileId, String, {
    lower: |id| id.as_str().to_owned(),
    try_lift: |s| Ok(ProfileId::from_host(s)),
});

// A message's bytes cross as `ByteArray` (Kotlin) / `Data` (Swift).
uniffi::custom_type!(RawMessage, Vec<u8>, {
    lower: |raw| raw.0,
    try_lift: |bytes| Ok(RawMessage(bytes)),
});

uniffi::custom_type!(Timestamp, SystemTime, {
    lower: |t| SystemTime::from(t.to_datetime()),
    try_lift: |s| timestamp_from_host(s),
});

/// A host instant as a [`Timestamp`]; one outside the years ±9999 (e.g.
/// Kotlin's `Instant.MAX`) is a `validation` error, not a panic (which
/// would abort the host process).
fn timestamp_from_host(at: SystemTime) -> uniffi::Result<Timestamp> {
    let nanos = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok(),
        Err(before) => i128::try_from(before.duration().as_nanos())
            .ok()
            .map(|n| -n),
    };
    nanos
        .and_then(|n| time::OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .map(Timestamp::from)
        .ok_or_else(|| {
            MailsyncError::from(Error::validation(
                "timestamp",
                "must be between the years -9999 and 9999",
            ))
            .into()
        })
}

/// A secret as Kotlin and Swift hold it (the host type of [`Secret`] and
/// [`BearerToken`]): it shows as [`Secret::MASK`] in every rendering and
/// compares by value. [`SecretValue::expose`] gives the text of an access
/// token or of a value the host made; a secret read from mailsync (a client
/// secret, a password) stays unreadable, and passing it back keeps it.
#[derive(uniffi::Object)]
#[uniffi::export(Debug, Display, Eq, Hash)]
pub struct SecretValue {
    secret: Secret,
    readable: bool,
}

#[uniffi::export]
impl SecretValue {
    /// A secret with this text (a client secret, a password, a token).
    #[uniffi::constructor]
    pub fn new(text: String) -> Arc<Self> {
        Arc::new(SecretValue {
            secret: Secret::new(text),
            readable: true,
        })
    }

    /// The text of an access token or of a value the host made;
    /// [`Secret::MASK`] for a secret read from mailsync.
    pub fn expose(&self) -> String {
        if self.readable {
            self.secret.expose().to_owned()
        } else {
            Secret::MASK.to_owned()
        }
    }

    /// Whether [`SecretValue::expose`] gives the text (false for a secret
    /// read from mailsync).
    pub fn is_readable(&self) -> bool {
        self.readable
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Secret::MASK)
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Secret::MASK)
    }
}

impl PartialEq for SecretValue {
    /// The secrets, compared in constant time.
    fn eq(&self, other: &Self) -> bool {
        self.secret == other.secret
    }
}

impl Eq for SecretValue {}

impl Hash for SecretValue {
    /// The same for every secret (a hash would tell something about it).
    fn hash<H: Hasher>(&self, _state: &mut H) {}
}

uniffi::custom_type!(Secret, Arc<SecretValue>, {
    lower: |secret| Arc::new(SecretValue { secret, readable: false }),
    try_lift: |value| Ok(value.secret.clone()),
});

uniffi::custom_type!(BearerToken, Arc<SecretValue>, {
    lower: |token| Arc::new(SecretValue { secret: token.secret().clone(), readable: true }),
    try_lift: |value| Ok(BearerToken::new(value.secret.clone())),
});
