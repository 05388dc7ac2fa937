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

    /// A key from text: the base64 (standard alphabet, padded or not) or
    /// the hex form of its 32 bytes.
    pub fn from_text(text: &str) -> Result<Self> {
        use base64::Engine as _;
        let text = text.trim();
        let bytes: Option<Zeroizing<Vec<u8>>> =
            if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                (0..KEY_LEN)
                    .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
                    .map(Zeroizing::new)
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(text.trim_end_matches('='))
                    .or_else(|_| {
                        base64::engine::general_purpose::STANDARD_NO_PAD
                            .decode(text.trim_end_matches('='))
                    })
                    .ok()
                    .map(Zeroizing::new)
            };
        match bytes {
            Some(b) if b.len() == KEY_LEN => SealKey::from_bytes(&b),
            _ => Err(Error::validation(
                "seal_key",
                format!("must be the base64 or hex text of exactly {KEY_LEN} bytes"),
            )),
        }
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
    /// that call it at the same moment take turns (an advisory lock on
    /// `<path>.lock`) and all get the same key.
    ///
    /// An existing key file is refused (`store`) when it is a symbolic link,
    /// is owned by another user than the one this process runs as, or lets
    /// group or others read or write it (Unix). A new one is written
    /// atomically: a temporary file, fsync, rename, fsync of the directory.
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

/// The key a store seals with, shared by its clones and replaced in place
/// by a key rotation ([`crate::Store::rotate_key`]).
#[derive(Clone)]
pub(crate) struct SharedKey(std::sync::Arc<std::sync::RwLock<SealKey>>);

impl SharedKey {
    pub(crate) fn new(key: SealKey) -> SharedKey {
        SharedKey(std::sync::Arc::new(std::sync::RwLock::new(key)))
    }

    /// The key in use.
    pub(crate) fn current(&self) -> SealKey {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Uses `key` from now on.
    pub(crate) fn replace(&self, key: SealKey) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    pub(crate) fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.current().seal(context, plaintext)
    }

    pub(crate) fn open(&self, context: &str, envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        self.current().open(context, envelope)
    }

    pub(crate) fn seal_secret(&self, context: &str, secret: &Secret) -> Result<Vec<u8>> {
        self.current().seal_secret(context, secret)
    }

    pub(crate) fn open_secret(&self, context: &str, envelope: &[u8]) -> Result<Secret> {
        self.current().open_secret(context, envelope)
    }
}

/// Re-seals one sealed value from `old` to `new` during a key rotation.
/// `None`: it already opens with `new` (a rotation being resumed), so it is
/// left as it is. A value neither key opens is `seal_key_mismatch`.
pub(crate) fn reseal(
    old: &SealKey,
    new: &SealKey,
    context: &str,
    envelope: &[u8],
) -> Result<Option<Vec<u8>>> {
    match old.open(context, envelope) {
        Ok(plain) => Ok(Some(new.seal(context, &plain)?)),
        Err(e) => {
            if new.open(context, envelope).is_ok() {
                Ok(None)
            } else {
                Err(Error::new(
                    ErrorCode::SealKeyMismatch,
                    format!(
                        "key rotation stopped: the sealed value for {context} opens with neither key ({}); nothing was changed",
                        e.code()
                    ),
                ))
            }
        }
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
    _lock: std::fs::File,
}

/// The lock file beside a key file: `<key>.lock`. It is never removed (a
/// lock file that is deleted while someone waits on it no longer excludes
/// anyone); it stays empty.
pub(crate) fn lock_path(key_path: &Path) -> std::path::PathBuf {
    let mut name = key_path.as_os_str().to_owned();
    name.push(".lock");
    std::path::PathBuf::from(name)
}

fn store_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::new(
        ErrorCode::Store,
        format!("cannot {what} key file {}: {e}", path.display()),
    )
}

/// Opens a file without following a symbolic link in its last component.
fn open_no_follow(
    path: &Path,
    options: &mut std::fs::OpenOptions,
) -> std::io::Result<std::fs::File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    }
    options.open(path)
}

/// Checks an opened key file: a regular file, owned by the user this
/// process runs as, with no permission for group or others. A key file
/// anyone else can read is a leaked key; one someone else owns or can write
/// may have been swapped.
fn check_key_file(path: &Path, file: &std::fs::File) -> Result<()> {
    let meta = file
        .metadata()
        .map_err(|e| store_error(path, "inspect", e))?;
    let refuse = |why: String| {
        Err(Error::new(
            ErrorCode::Store,
            format!(
                "refusing key file {}: {why}; nothing was read or changed",
                path.display()
            ),
        ))
    };
    if !meta.file_type().is_file() {
        return refuse("it is not a regular file".to_owned());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return refuse(format!(
                "it is owned by uid {}, not by the user this process runs as (uid {me}); \
                 give it to that user (chown)",
                meta.uid()
            ));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return refuse(format!(
                "its mode {mode:04o} lets group or others read or write it; make it 0600 (chmod 600) \
                 and consider the key exposed"
            ));
        }
    }
    Ok(())
}

/// Reads an existing key file: `None` when there is none, or when it is
/// empty (a creation that never finished, left by an older version). A
/// symbolic link, a file of another user or one that group or others may
/// read or write is refused (`store`), as is a file of the wrong length.
pub(crate) fn read_key_file(path: &Path) -> Result<Option<SealKey>> {
    use std::io::Read;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(store_error(path, "inspect", e)),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(Error::new(
                ErrorCode::Store,
                format!(
                    "refusing key file {}: it is a symbolic link; put the key file itself there \
                     (nothing was read or changed)",
                    path.display()
                ),
            ));
        }
        Ok(_) => {}
    }
    // O_NOFOLLOW: a link swapped in since the check fails here (ELOOP).
    let mut file = open_no_follow(path, std::fs::OpenOptions::new().read(true))
        .map_err(|e| store_error(path, "open", e))?;
    check_key_file(path, &file)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_LEN + 1));
    (&mut file)
        .take(KEY_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| store_error(path, "read", e))?;
    if bytes.is_empty() {
        return Ok(None);
    }
    SealKey::from_bytes(&bytes).map(Some).map_err(|_| {
        Error::new(
            ErrorCode::Store,
            format!(
                "key file {} must hold exactly {KEY_LEN} bytes",
                path.display()
            ),
        )
    })
}

/// Writes a new key file atomically: a temporary file beside it (mode 0600,
/// created exclusively), written and fsynced, renamed over the path, then
/// the directory fsynced, so that a crash leaves either no key file or a
/// whole one — never a short one.
pub(crate) fn write_key_file(path: &Path, key: &SealKey) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix)
        .map_err(|e| Error::new(ErrorCode::Internal, format!("no randomness available: {e}")))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(format!(
        ".tmp-{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let tmp = dir.join(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = (|| -> std::io::Result<()> {
        let mut file = open_no_follow(&tmp, &mut options)?;
        file.write_all(key.0.as_ref())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory is.
        #[cfg(unix)]
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(store_error(path, "write", e));
    }
    Ok(())
}

/// Reads the key file at `path` under an exclusive advisory lock (on
/// `<path>.lock`, created 0600 if missing), creating the key when there is
/// none and `may_create` agrees. An existing file must be safe to trust
/// (see [`read_key_file`]); a new one is written atomically
/// ([`write_key_file`]). When `may_create` refuses, nothing is written.
pub(crate) fn lock_key_file(
    path: &Path,
    may_create: impl FnOnce() -> Result<()>,
) -> Result<LockedKeyFile> {
    let lock_file = lock_path(path);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let lock = open_no_follow(&lock_file, &mut options)
        .map_err(|e| store_error(path, "open the lock of", e))?;
    lock.lock().map_err(|e| store_error(path, "lock", e))?;
    if let Some(key) = read_key_file(path)? {
        return Ok(LockedKeyFile {
            key,
            created: false,
            _lock: lock,
        });
    }
    may_create()?;
    let key = SealKey::generate()?;
    write_key_file(path, &key)?;
    Ok(LockedKeyFile {
        key,
        created: true,
        _lock: lock,
    })
}

/// Creates the SQLite database file at `path` with mode 0600 when it does
/// not exist yet, so the database and the `-wal` / `-shm` files SQLite
/// creates beside it (SQLite gives them the database file's mode) are the
/// owner's alone. An existing file is left as it is.
pub(crate) fn create_private_file(path: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match open_no_follow(path, &mut options) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::new(
            ErrorCode::Store,
            format!("cannot create database {}: {e}", path.display()),
        )),
    }
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
        // Created atomically: no temporary file is left beside it.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["k.key", "k.key.lock"]);
    }

    /// An existing key file that others may read or write, that another
    /// user owns, or that is a symbolic link is refused, unread and unchanged.
    #[cfg(unix)]
    #[test]
    fn unsafe_key_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        SealKey::load_or_create(&path).unwrap();
        let original = std::fs::read(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = SealKey::load_or_create(&path).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Store, "{mode:o}");
            assert!(e.message().contains("chmod 600"), "{mode:o}: {e}");
            assert_eq!(std::fs::read(&path).unwrap(), original);
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        SealKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

        // A symbolic link, even to a good key file.
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = SealKey::load_or_create(&link).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Store);
        assert!(e.message().contains("symbolic link"), "{e}");
        // A dangling one is not followed to create a key either.
        let dangling = dir.path().join("dangling.key");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &dangling).unwrap();
        let e = SealKey::load_or_create(&dangling).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Store, "{e}");
        assert!(!dir.path().join("elsewhere").exists());

        // Another user's file (only root can make one here).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let e = SealKey::load_or_create(&path).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Store);
            assert!(e.message().contains("owned by uid 65534"), "{e}");
            std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        } else {
            eprintln!("not root: the other-owner case is not exercised");
        }
        SealKey::load_or_create(&path).unwrap();

        // A directory where the key should be.
        let not_file = dir.path().join("dir.key");
        std::fs::create_dir(&not_file).unwrap();
        assert_eq!(
            SealKey::load_or_create(&not_file).unwrap_err().code(),
            ErrorCode::Store
        );
    }

    /// A key file left empty (a creation that never finished) gets a key,
    /// written whole; a short or long one is refused.
    #[test]
    fn empty_key_files_are_filled_and_wrong_lengths_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        drop(options.open(&path).unwrap());
        let key = SealKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), key.0.as_ref());
        std::fs::write(&path, [1u8; 31]).unwrap();
        assert_eq!(
            SealKey::load_or_create(&path).unwrap_err().code(),
            ErrorCode::Store
        );
        std::fs::write(&path, [1u8; 33]).unwrap();
        assert_eq!(
            SealKey::load_or_create(&path).unwrap_err().code(),
            ErrorCode::Store
        );
    }
}
