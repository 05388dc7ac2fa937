//! The seal key that encrypts secrets at rest.

use std::sync::Arc;

use crate::error::{Result, guard};

/// A 32-byte key that seals secrets at rest. `toString()` never shows it.
#[derive(uniffi::Object)]
#[uniffi::export(Debug)]
pub struct SealKey {
    pub(crate) inner: mailsync::SealKey,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[uniffi::export]
impl SealKey {
    /// A key from exactly 32 bytes supplied by the host (KMS, keyring, …);
    /// anything else is a `validation` error on `seal_key`.
    #[uniffi::constructor]
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Arc<SealKey>> {
        guard(|| {
            Ok(Arc::new(SealKey {
                inner: mailsync::SealKey::from_bytes(&bytes)?,
            }))
        })
    }

    /// A fresh random key.
    #[uniffi::constructor]
    pub fn generate() -> Result<Arc<SealKey>> {
        guard(|| {
            Ok(Arc::new(SealKey {
                inner: mailsync::SealKey::generate()?,
            }))
        })
    }
}
