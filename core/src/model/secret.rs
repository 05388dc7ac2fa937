//! A secret string that never shows itself.
//!
//! Wraps [`secrecy::SecretString`]: zeroized on drop, redacted in `Debug` and
//! `Display`, and deliberately not `Serialize`. Reading it takes an explicit
//! [`Secret::expose`] call, which makes every use easy to audit.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// A client secret, password, token, code or verifier.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// What the language bindings show in place of a stored secret (they
    /// never reveal one). Writing it back — or leaving the secret out — on
    /// an update keeps the stored secret.
    pub const MASK: &'static str = "********";

    /// Whether this is [`Secret::MASK`] rather than a real value.
    pub fn is_mask(&self) -> bool {
        self.expose() == Secret::MASK
    }

    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The value in clear. Call only where the value must leave the process
    /// (a request to the provider, a SASL exchange, sealing).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl PartialEq for Secret {
    /// Constant-time comparison.
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.expose()
            .as_bytes()
            .ct_eq(other.expose().as_bytes())
            .into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

/// A bearer token handed to the host so it can use it (an access token).
/// Unlike a [`Secret`] it crosses into the language bindings in clear; it
/// still never shows itself in `Debug` or `Display`.
#[derive(Clone, PartialEq)]
pub struct BearerToken(Secret);

impl BearerToken {
    /// Wraps a token.
    pub fn new(secret: Secret) -> Self {
        BearerToken(secret)
    }

    /// The token in clear.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The token as a [`Secret`].
    pub fn secret(&self) -> &Secret {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken([REDACTED])")
    }
}

impl fmt::Display for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_itself() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-very-secret");
        assert_eq!(s, Secret::new("hunter2-very-secret"));
        assert_ne!(s, Secret::new("other"));
    }
}
