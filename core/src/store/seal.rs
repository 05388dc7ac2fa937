//! Sealing secrets at rest with XChaCha20-Poly1305.
//!
//! Envelope: `version (1 byte) || nonce (24 bytes) || ciphertext+tag`. The
//! associated data names what is sealed (e.g. `profile:<id>:secret`), so a
//! sealed value copied onto another row fails to open. The key comes from the
//! host ([`SealKey::from_bytes`]) or, for the embedded default, from a 0600
//! key file created next to the database ([`SealKey::load_or_create`]).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorCode, Result};
use crate::model::Secret;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// Length of a seal key in bytes.
pub const KEY_LEN: usize = 32;

/// A 256-bit key for sealing secrets. Redacted in `Debug`, zeroized on drop.
#[derive(Clone)]
pub struct SealKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey([REDACTED])")
    }
}

impl SealKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(key.as_mut()).map_err(|e| {
            Error::new(ErrorCode::Internal, format!("no randomness available: {e}"))
        })?;
        Ok(SealKey(key))
    }

    /// A key from 32 bytes supplied by the host (e.g. from a KMS or keyring).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::validation("seal_key", format!("must be exactly {KEY_LEN} bytes"))
        })?;
        Ok(SealKey(Zeroizing::new(array)))
    }

    /// Reads a key file (32 raw bytes).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorCode::Store,
                format!("cannot read key file {}: {e}", path.display()),
            )
        })?);
        SealKey::from_bytes(&bytes).map_err(|_| {
            Error::new(
                ErrorCode::Store,
                format!(
                    "key file {} must hold exactly {KEY_LEN} bytes",
                    path.display()
                ),
            )
        })
    }

    /// Reads the key file, or creates it with a new random key and mode 0600
    /// when it does not exist or is empty. Never overwrites a key; processes
    /// that call it at the same moment take turns (an advisory lock on the
    /// file) and all get the same key.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Self> {
        Ok(lock_key_file(path.as_ref(), || Ok(()))?.key)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        let key: &[u8; KEY_LEN] = &self.0;
        XChaCha20Poly1305::new(key.into())
    }

    /// Seals `plaintext`, binding it to `context`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| {
            Error::new(ErrorCode::Internal, format!("no randomness available: {e}"))
        })?;
        let nonce_ref = XNonce::from(nonce);
        let ciphertext = self
            .cipher()
            .encrypt(
                &nonce_ref,
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| Error::new(ErrorCode::Internal, "sealing failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Opens an envelope sealed for `context`. A wrong key or a value moved
    /// from another context fails with `seal_key_mismatch`.
    pub fn open(&self, context: &str, envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if envelope.len() < 1 + NONCE_LEN + 16 || envelope[0] != VERSION {
            return Err(Error::new(
                ErrorCode::Store,
                format!("sealed value for {context} is malformed or of an unknown version"),
            ));
        }
        let nonce: [u8; NONCE_LEN] = envelope[1..1 + NONCE_LEN]
            .try_into()
            .map_err(|_| Error::new(ErrorCode::Store, "malformed nonce"))?;
        self.cipher()
            .decrypt(&XNonce::from(nonce), Payload { msg: &envelope[1 + NONCE_LEN..], aad: context.as_bytes() })
            .map(Zeroizing::new)
            .map_err(|_| {
                Error::new(
                    ErrorCode::SealKeyMismatch,
                    format!("cannot open the sealed value for {context}: wrong seal key or tampered data"),
                )
            })
    }

    /// Seals a [`Secret`].
    pub fn seal_secret(&self, context: &str, secret: &Secret) -> Result<Vec<u8>> {
        self.seal(context, secret.expose().as_bytes())
    }

    /// Opens a sealed [`Secret`].
    pub fn open_secret(&self, context: &str, envelope: &[u8]) -> Result<Secret> {
        let bytes = self.open(context, envelope)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Error::new(
                ErrorCode::Store,
                format!("sealed value for {context} is not text"),
            )
        })?;
        Ok(Secret::new(text))
    }
}

/// A key file held under an exclusive advisory lock until dropped, with its
/// key. Opening a database with its default key file happens under this
/// lock, so processes that create the same database take turns.
pub(crate) struct LockedKeyFile {
    /// The key in the file.
    pub key: SealKey,
    /// Whether this call wrote the key (the file had none).
    pub created: bool,
    _file: std::fs::File,
}

/// Opens (creating if missing, mode 0600) and locks the key file at `path`.
/// If it holds no key yet, `may_create` decides whether one may be made; when
/// it refuses, a file this call created is removed again.
pub(crate) fn lock_key_file(
    path: &Path,
    may_create: impl FnOnce() -> Result<()>,
) -> Result<LockedKeyFile> {
    use std::io::{Read, Write};
    let io_error = |what: &str, e: std::io::Error| {
        Error::new(
            ErrorCode::Store,
            format!("cannot {what} key file {}: {e}", path.display()),
        )
    };
    let existed = path.exists();
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| io_error("open", e))?;
    file.lock().map_err(|e| io_error("lock", e))?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes)
        .map_err(|e| io_error("read", e))?;
    if bytes.is_empty() {
        if let Err(e) = may_create() {
            if !existed {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        let key = SealKey::generate()?;
        file.write_all(key.0.as_ref())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("write", e))?;
        return Ok(LockedKeyFile {
            key,
            created: true,
            _file: file,
        });
    }
    let key = SealKey::from_bytes(&bytes).map_err(|_| {
        Error::new(
            ErrorCode::Store,
            format!(
                "key file {} must hold exactly {KEY_LEN} bytes",
                path.display()
            ),
        )
    })?;
    Ok(LockedKeyFile {
        key,
        created: false,
        _file: file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let key = SealKey::generate().unwrap();
        let sealed = key.seal("profile:1:secret", b"s3cr3t").unwrap();
        assert_eq!(sealed[0], VERSION);
        assert!(!sealed.windows(6).any(|w| w == b"s3cr3t"));
        assert_eq!(&*key.open("profile:1:secret", &sealed).unwrap(), b"s3cr3t");
        let moved = key.open("profile:2:secret", &sealed).unwrap_err();
        assert_eq!(moved.code(), ErrorCode::SealKeyMismatch);
        let other = SealKey::generate().unwrap();
        assert_eq!(
            other.open("profile:1:secret", &sealed).unwrap_err().code(),
            ErrorCode::SealKeyMismatch
        );
        assert_eq!(
            key.open("x", &[9, 1, 2]).unwrap_err().code(),
            ErrorCode::Store
        );
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let a = SealKey::load_or_create(&path).unwrap();
        let b = SealKey::load_or_create(&path).unwrap();
        assert_eq!(a.0.as_ref(), b.0.as_ref());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(!format!("{a:?}").contains(&format!("{:?}", a.0.as_ref())));
        assert_eq!(
            SealKey::from_bytes(&[1; 5]).unwrap_err().code(),
            ErrorCode::Validation
        );
    }
}
