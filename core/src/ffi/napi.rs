//! napi-rs (Node.js): how the library's own value types cross into
//! JavaScript. Ids are strings, a [`Timestamp`] is a `Date`, a [`Secret`]
//! reads as a [`SecretValue`] that shows as [`Secret::MASK`] and writes as
//! its text (or as that value), a [`BearerToken`] reads as its text. The
//! TypeScript names (`MailboxId`, `Timestamp`, …) are aliases declared once
//! in the package's `.d.ts` header.

use napi::bindgen_prelude::{
    Buffer, ClassInstance, FromNapiValue, JsObjectValue, Object, ToNapiValue, TypeName,
    ValidateNapiValue,
};
use napi::{Env, Error, Property, PropertyAttributes, Status, ValueType, sys};

use crate::connections::AccessToken;
use crate::model::{BearerToken, MailboxId, ProfileId, Secret, ServerType, Timestamp};
use crate::sync::RawMessage;

/// Implements the napi traits for a type that crosses as a string.
macro_rules! string_like {
    ($ty:ty, |$out:ident| $to:expr, |$in:ident| $from:expr) => {
        impl TypeName for $ty {
            fn type_name() -> &'static str {
                stringify!($ty)
            }

            fn value_type() -> ValueType {
                ValueType::String
            }
        }

        impl ValidateNapiValue for $ty {}

        impl ToNapiValue for $ty {
            unsafe fn to_napi_value(
                env: sys::napi_env,
                value: Self,
            ) -> napi::Result<sys::napi_value> {
                let $out = value;
                let text: String = $to;
                // SAFETY: the env is the one napi handed to the caller.
                unsafe { String::to_napi_value(env, text) }
            }
        }

        impl FromNapiValue for $ty {
            unsafe fn from_napi_value(
                env: sys::napi_env,
                value: sys::napi_value,
            ) -> napi::Result<Self> {
                // SAFETY: as above.
                let $in = unsafe { String::from_napi_value(env, value) }?;
                Ok($from)
            }
        }
    };
}

string_like!(MailboxId, |id| id.as_str().to_owned(), |s| {
    MailboxId::from_host(s)
});
string_like!(ProfileId, |id| id.as_str().to_owned(), |s| {
    ProfileId::from_host(s)
});
string_like!(
    BearerToken,
    |t| t.expose().to_owned(),
    |s| BearerToken::new(Secret::new(s))
);

impl TypeName for Timestamp {
    fn type_name() -> &'static str {
        "Date"
    }

    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ValidateNapiValue for Timestamp {}

impl ToNapiValue for Timestamp {
    unsafe fn to_napi_value(env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
        let mut out = std::ptr::null_mut();
        // SAFETY: the env is the one napi handed to the caller.
        let status = unsafe { sys::napi_create_date(env, value.unix_millis() as f64, &mut out) };
        if status != sys::Status::napi_ok {
            return Err(Error::new(
                Status::GenericFailure,
                "cannot create a Date".to_owned(),
            ));
        }
        Ok(out)
    }
}

impl FromNapiValue for Timestamp {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let mut millis = 0.0;
        // SAFETY: as above.
        let status = unsafe { sys::napi_get_date_value(env, value, &mut millis) };
        if status != sys::Status::napi_ok || !millis.is_finite() {
            return Err(Error::new(
                Status::DateExpected,
                "expected a valid Date".to_owned(),
            ));
        }
        Ok(Timestamp::from_unix_millis(millis as i64))
    }
}

/// An [`AccessToken`] crosses as `{ token, expiresAt?, account }` whose
/// `token` (the bearer token's text) is not enumerable: `JSON.stringify`,
/// `util.inspect` and spreading leave it out, reading `token` gives it.
impl ToNapiValue for AccessToken {
    unsafe fn to_napi_value(env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
        let mut object = Object::new(&Env::from_raw(env))?;
        object.set_named_property("account", value.account)?;
        if let Some(at) = value.expires_at {
            object.set_named_property("expiresAt", at)?;
        }
        let token = Property::new()
            .with_utf8_name("token")?
            .with_value(&Env::from_raw(env).create_string(value.token.expose())?)
            .with_property_attributes(PropertyAttributes::Default);
        object.define_properties(&[token])?;
        // SAFETY: the env is the one napi handed to the caller.
        unsafe { Object::to_napi_value(env, object) }
    }
}

/// [`ServerType`] crosses as its serde string (`'gmail'`, `'imap_smtp'`,
/// `'pop3_smtp'`): napi's `snake_case` would make `Pop3Smtp` `'pop_3_smtp'`.
/// The TypeScript union is in the package's `.d.ts` header.
impl TypeName for ServerType {
    fn type_name() -> &'static str {
        "ServerType"
    }

    fn value_type() -> ValueType {
        ValueType::String
    }
}

impl ValidateNapiValue for ServerType {}

impl ToNapiValue for ServerType {
    unsafe fn to_napi_value(env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
        let text = serde_json::to_value(value).map_err(|e| Error::from_reason(e.to_string()))?;
        // SAFETY: the env is the one napi handed to the caller.
        unsafe { String::to_napi_value(env, text.as_str().unwrap_or_default().to_owned()) }
    }
}

impl FromNapiValue for ServerType {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        // SAFETY: as above.
        let text = unsafe { String::from_napi_value(env, value) }?;
        serde_json::from_value(serde_json::Value::String(text.clone())).map_err(|_| {
            Error::new(
                Status::InvalidArg,
                format!("value `{text}` does not match any variant of enum `ServerType`"),
            )
        })
    }
}

/// A [`Secret`] as JavaScript reads it: an opaque value that shows as
/// [`Secret::MASK`] in every rendering (`String()`, template strings, `==`,
/// `JSON.stringify`; the package adds `util.inspect`) while the secret stays
/// in Rust. Records are plain JavaScript objects, so this is what lets a
/// record made by a preset (`googleApp(id, secret)`) or read from mailsync
/// be passed back (to create or update a profile) without the host holding
/// the secret. Writing a string sets the secret; the mask (or nothing) keeps
/// the stored one on update.
#[napi_derive::napi]
pub struct SecretValue(Secret);

#[napi_derive::napi]
impl SecretValue {
    /// Always `'********'`.
    #[napi(js_name = "toString")]
    pub fn to_text(&self) -> &'static str {
        Secret::MASK
    }

    /// Always `'********'`.
    #[napi(js_name = "toJSON")]
    pub fn to_json(&self) -> &'static str {
        Secret::MASK
    }

    /// Always `'********'` (`==`, template strings).
    #[napi(well_known_symbol = "toPrimitive")]
    pub fn to_primitive(&self) -> &'static str {
        Secret::MASK
    }
}

impl TypeName for Secret {
    fn type_name() -> &'static str {
        "Secret"
    }

    fn value_type() -> ValueType {
        ValueType::String
    }
}

impl ValidateNapiValue for Secret {}

impl ToNapiValue for Secret {
    unsafe fn to_napi_value(env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
        // SAFETY: the env is the one napi handed to the caller.
        unsafe { SecretValue::to_napi_value(env, SecretValue(value)) }
    }
}

impl FromNapiValue for Secret {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        // SAFETY: as above.
        if let Ok(text) = unsafe { String::from_napi_value(env, value) } {
            return Ok(Secret::new(text));
        }
        // SAFETY: as above.
        match unsafe { ClassInstance::<SecretValue>::from_napi_value(env, value) } {
            Ok(secret) => Ok(secret.0.clone()),
            Err(_) => Err(Error::new(
                Status::InvalidArg,
                "expected a string or a secret read from mailsync".to_owned(),
            )),
        }
    }
}

/// A [`RawMessage`] crosses as a `Buffer` (no list of numbers); the
/// TypeScript alias is in the package's `.d.ts` header.
impl TypeName for RawMessage {
    fn type_name() -> &'static str {
        "RawMessage"
    }

    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ValidateNapiValue for RawMessage {}

impl ToNapiValue for RawMessage {
    unsafe fn to_napi_value(env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
        // SAFETY: the env is the one napi handed to the caller.
        unsafe { Buffer::to_napi_value(env, Buffer::from(value.0)) }
    }
}

impl FromNapiValue for RawMessage {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        // SAFETY: as above.
        Ok(RawMessage(
            unsafe { Buffer::from_napi_value(env, value) }?.to_vec(),
        ))
    }
}
