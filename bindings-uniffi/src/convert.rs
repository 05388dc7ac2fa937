//! Small conversions shared by the mirror types: enums, timestamps, ids and
//! integer ranges. Conversions only; every rule lives in core.

use std::time::SystemTime;

use mailsync::model::{MailboxId, ProfileId};
use time::OffsetDateTime;

/// Declares a UniFFI enum mirroring a fieldless core enum, with `From` both
/// ways. Variant names are the core's, so Kotlin/Swift case names are the
/// serde snake_case strings in the host's case (`START_TLS`, `.startTls`).
macro_rules! mirror_enum {
    ($(#[$doc:meta])* $name:ident => $core:path { $( $(#[$vdoc:meta])* $variant:ident ),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, uniffi::Enum)]
        pub enum $name {
            $( $(#[$vdoc])* $variant, )*
        }

        impl From<$core> for $name {
            fn from(value: $core) -> Self {
                use $core as C;
                match value { $( C::$variant => $name::$variant, )* }
            }
        }

        impl From<$name> for $core {
            fn from(value: $name) -> Self {
                use $core as C;
                match value { $( $name::$variant => C::$variant, )* }
            }
        }
    };
}
pub(crate) use mirror_enum;

pub(crate) fn to_system_time(at: OffsetDateTime) -> SystemTime {
    SystemTime::from(at)
}

pub(crate) fn from_system_time(at: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(at)
}

pub(crate) fn profile_id(id: &str) -> mailsync::Result<ProfileId> {
    ProfileId::parse(id)
}

pub(crate) fn mailbox_id(id: &str) -> mailsync::Result<MailboxId> {
    MailboxId::parse(id)
}

/// An `Int` from the host into a core integer type, or a validation error
/// naming the field (the host has no unsigned 16-bit type worth using).
pub(crate) fn int_in<T: TryFrom<i64>>(
    field: &str,
    value: i64,
    min: i64,
    max: i64,
) -> mailsync::Result<T> {
    if value < min || value > max {
        return Err(mailsync::Error::validation(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
    T::try_from(value)
        .map_err(|_| mailsync::Error::validation(field, format!("must be between {min} and {max}")))
}
