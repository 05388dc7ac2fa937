//! The CLI's message sinks: `files` (each message as an `.eml` file plus an
//! append-only JSON-lines index) and `print` (one line per message, nothing
//! stored).
//!
//! The files sink is idempotent by message key: a message whose key already
//! has a file is not written again (delivery is at least once, so a cycle
//! cut short comes again), and the index gets one line per key. It is also
//! the CLI's "CRM" for the incoming filter: Message-IDs in its index count
//! as tracked email, so with `replies-to-tracked-email` a reply to mail the
//! CLI already took in passes the filter.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mailsync::model::MailboxId;
use mailsync::sync::{DeliveryOutcome, IncomingMessage, MailAddress, MessageSink};
use mailsync::{Error, ErrorCode, Timestamp};
use sha2::{Digest, Sha256};

use crate::sync_progress::Reporter;

/// The index file in the output directory.
pub const INDEX: &str = "index.jsonl";

/// Longest file name stem before it is shortened with a hash.
const MAX_STEM: usize = 160;

/// A file name for a message key, injective and safe in any directory:
/// letters, digits and `@ . + -` stay, `:` becomes `_`, every other byte
/// becomes `%XX` (so `_`, `%`, `/` and `~` never appear unencoded), a
/// leading dot is encoded, and a long name keeps its first characters plus
/// `~` and a hash of the whole key. `gm:1278455344230334865` →
/// `gm_1278455344230334865.eml`, `mid:a1@example.test#9f…` →
/// `mid_a1@example.test%239f….eml`.
pub fn file_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for (i, b) in key.bytes().enumerate() {
        match b {
            b'.' if i == 0 => out.push_str("%2E"),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'@' | b'.' | b'+' | b'-' => {
                out.push(char::from(b))
            }
            b':' => out.push('_'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    if out.len() > MAX_STEM {
        let digest = Sha256::digest(key.as_bytes());
        let hash: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        out.truncate(MAX_STEM - 1 - hash.len());
        out.push('~');
        out.push_str(&hash);
    }
    out.push_str(".eml");
    out
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorCode::Store, format!("{what} {}: {e}", path.display()))
}

/// One line of the index (and of `--sink print --json`), fields in this order.
#[derive(serde::Serialize)]
pub struct IndexEntry<'a> {
    pub key: &'a str,
    pub mailbox: &'a str,
    pub mailbox_id: &'a MailboxId,
    pub uid: Option<u32>,
    pub uid_validity: Option<u32>,
    pub uidl: Option<&'a str>,
    pub provider_id: Option<&'a str>,
    pub thread_id: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub in_reply_to: &'a [String],
    pub references: &'a [String],
    pub from: &'a [MailAddress],
    pub to: &'a [MailAddress],
    pub cc: &'a [MailAddress],
    pub subject: Option<&'a str>,
    pub date: Option<Timestamp>,
    pub received_at: Option<Timestamp>,
    pub size: u32,
    pub flags: &'a [String],
    pub unparsed: bool,
    /// The `.eml` file in the directory (files sink only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<&'a str>,
    /// When the sink wrote it (files sink only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<Timestamp>,
}

impl<'a> IndexEntry<'a> {
    pub fn new(m: &'a IncomingMessage, mailbox: &'a str) -> Self {
        IndexEntry {
            key: &m.key,
            mailbox,
            mailbox_id: &m.mailbox_id,
            uid: m.uid,
            uid_validity: m.uid_validity,
            uidl: m.uidl.as_deref(),
            provider_id: m.provider_id.as_deref(),
            thread_id: m.thread_id.as_deref(),
            message_id: m.message_id.as_deref(),
            in_reply_to: &m.in_reply_to,
            references: &m.references,
            from: &m.from,
            to: &m.to,
            cc: &m.cc,
            subject: m.subject.as_deref(),
            date: m.date,
            received_at: m.received_at,
            size: m.size,
            flags: &m.flags,
            unparsed: m.unparsed,
            file: None,
            stored_at: None,
        }
    }
}

/// Mailbox ids to addresses, for the records the sinks write.
#[derive(Debug, Clone, Default)]
pub struct MailboxNames(HashMap<MailboxId, String>);

impl MailboxNames {
    pub fn new(mailboxes: &[mailsync::model::Mailbox]) -> Self {
        MailboxNames(
            mailboxes
                .iter()
                .map(|m| (m.id.clone(), m.email.clone()))
                .collect(),
        )
    }

    pub fn email(&self, id: &MailboxId) -> String {
        self.0
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.as_str().to_owned())
    }
}

/// What the files sink knows from its index, read incrementally (other
/// processes may append to the same directory).
#[derive(Debug, Default)]
struct Index {
    /// Bytes of the index read so far (complete lines only).
    offset: u64,
    keys: HashSet<String>,
    message_ids: HashSet<String>,
}

impl Index {
    fn refresh(&mut self, path: &Path) -> Result<(), Error> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("cannot read", path, e)),
        };
        file.seek(SeekFrom::Start(self.offset))
            .map_err(|e| io_error("cannot read", path, e))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)
            .map_err(|e| io_error("cannot read", path, e))?;
        // A line still being appended by another process is read next time.
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        for line in buf[..=end].split(|b| *b == b'\n') {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(key) = value["key"].as_str() {
                self.keys.insert(key.to_owned());
            }
            if let Some(id) = value["message_id"].as_str() {
                self.message_ids.insert(id.to_owned());
            }
        }
        self.offset += end as u64 + 1;
        Ok(())
    }
}

struct FilesInner {
    dir: PathBuf,
    names: MailboxNames,
    index: Mutex<Index>,
    counter: AtomicU64,
}

/// `--sink files`: see the module docs.
#[derive(Clone)]
pub struct FileSink {
    inner: Arc<FilesInner>,
}

#[cfg(unix)]
fn private_file(options: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(0o600)
}

#[cfg(not(unix))]
fn private_file(options: &mut OpenOptions) -> &mut OpenOptions {
    options
}

impl FileSink {
    /// Opens (creating it, private to the user, if needed) the output
    /// directory and reads its index.
    pub fn open(dir: &Path, names: MailboxNames) -> Result<FileSink, Error> {
        if !dir.exists() {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(dir)
                .map_err(|e| io_error("cannot create", dir, e))?;
        } else if !dir.is_dir() {
            return Err(Error::validation(
                "out",
                format!("{} is not a directory", dir.display()),
            ));
        }
        let mut index = Index::default();
        index.refresh(&dir.join(INDEX))?;
        Ok(FileSink {
            inner: Arc::new(FilesInner {
                dir: dir.to_owned(),
                names,
                index: Mutex::new(index),
                counter: AtomicU64::new(0),
            }),
        })
    }

    /// Writes `bytes` to `path` atomically: a temporary file in the same
    /// directory, flushed, then renamed over the final name.
    fn write_atomically(inner: &FilesInner, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = inner.dir.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            inner.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = private_file(OpenOptions::new().write(true).create_new(true))
                .open(&tmp)
                .map_err(|e| io_error("cannot create", &tmp, e))?;
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_error("cannot write", &tmp, e))?;
            fs::rename(&tmp, path).map_err(|e| io_error("cannot rename to", path, e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn store_batch(
        inner: &FilesInner,
        messages: &[IncomingMessage],
    ) -> Result<Vec<DeliveryOutcome>, Error> {
        let index_path = inner.dir.join(INDEX);
        let mut index = inner.index.lock().unwrap_or_else(|e| e.into_inner());
        index.refresh(&index_path)?;
        let mut lines = String::new();
        let mut new_keys = Vec::new();
        let mut wrote_file = false;
        for m in messages {
            let name = file_name(&m.key);
            let path = inner.dir.join(&name);
            // Idempotent by key: a file that exists is this message already.
            if !path.exists() {
                Self::write_atomically(inner, &path, &m.raw)?;
                wrote_file = true;
            }
            // One index line per key; a file written by a run that stopped
            // before its index line gets the line now.
            if !index.keys.contains(&m.key) && !new_keys.contains(&m.key) {
                let mailbox = inner.names.email(&m.mailbox_id);
                let entry = IndexEntry {
                    file: Some(&name),
                    stored_at: Some(Timestamp::now_utc()),
                    ..IndexEntry::new(m, &mailbox)
                };
                let line = serde_json::to_string(&entry)
                    .map_err(|e| Error::new(ErrorCode::Internal, format!("index entry: {e}")))?;
                lines.push_str(&line);
                lines.push('\n');
                new_keys.push(m.key.clone());
            }
        }
        if !lines.is_empty() {
            let mut file = private_file(OpenOptions::new().append(true).create(true))
                .open(&index_path)
                .map_err(|e| io_error("cannot open", &index_path, e))?;
            // One write per batch: appends of other processes do not interleave.
            file.write_all(lines.as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(|e| io_error("cannot append to", &index_path, e))?;
        }
        if wrote_file || !lines.is_empty() {
            // The renames and the index are durable before the engine moves the cursor.
            if let Ok(dir) = File::open(&inner.dir) {
                let _ = dir.sync_all();
            }
        }
        // Read our own lines back, so the offset stays on line boundaries.
        index.refresh(&index_path)?;
        Ok(vec![DeliveryOutcome::Stored; messages.len()])
    }
}

#[async_trait]
impl MessageSink for FileSink {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || Self::store_batch(&inner, &messages))
            .await
            .map_err(|e| Error::new(ErrorCode::Internal, format!("files sink: {e}")))?
    }

    /// Mail the CLI already took in (any mailbox, this directory) is the
    /// tracked email.
    async fn tracked(
        &self,
        _mailbox: &MailboxId,
        message_ids: Vec<String>,
    ) -> mailsync::Result<Vec<bool>> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut index = inner.index.lock().unwrap_or_else(|e| e.into_inner());
            index.refresh(&inner.dir.join(INDEX))?;
            Ok(message_ids
                .iter()
                .map(|id| index.message_ids.contains(id))
                .collect())
        })
        .await
        .map_err(|e| Error::new(ErrorCode::Internal, format!("files sink: {e}")))?
    }
}

/// `--sink print`: one line per message on stdout; nothing is stored and
/// nothing counts as tracked.
pub struct PrintSink {
    pub reporter: Arc<Reporter>,
    pub names: MailboxNames,
}

#[async_trait]
impl MessageSink for PrintSink {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        for m in &messages {
            self.reporter.message(m, &self.names.email(&m.mailbox_id));
        }
        Ok(vec![DeliveryOutcome::Stored; messages.len()])
    }
}

/// A sink that takes nothing, for engines that only read status.
pub struct NoSink;

#[async_trait]
impl MessageSink for NoSink {
    async fn deliver(
        &self,
        messages: Vec<IncomingMessage>,
    ) -> mailsync::Result<Vec<DeliveryOutcome>> {
        Ok(vec![DeliveryOutcome::RetryLater; messages.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(key: &str, message_id: &str, raw: &[u8]) -> IncomingMessage {
        IncomingMessage {
            key: key.to_owned(),
            mailbox_id: MailboxId::new(),
            uid: Some(7),
            uid_validity: Some(1),
            uidl: None,
            provider_id: None,
            thread_id: None,
            message_id: Some(message_id.to_owned()),
            in_reply_to: vec!["root@crm.example.com".into()],
            references: Vec::new(),
            from: vec![MailAddress {
                name: Some("Bob".into()),
                address: "bob@example.test".into(),
            }],
            to: Vec::new(),
            cc: Vec::new(),
            subject: Some("Hello".into()),
            date: None,
            received_at: None,
            size: raw.len() as u32,
            flags: Vec::new(),
            unparsed: false,
            raw: raw.to_vec().into(),
        }
    }

    fn index_lines(dir: &Path) -> Vec<serde_json::Value> {
        fs::read_to_string(dir.join(INDEX))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn eml_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".eml"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        assert_eq!(
            file_name("gm:1278455344230334865"),
            "gm_1278455344230334865.eml"
        );
        assert_eq!(
            file_name("mid:a1@example.test#9f00"),
            "mid_a1@example.test%239f00.eml"
        );
        // Separators, dot names and the escape characters themselves are encoded.
        for key in [
            "mid:../../etc/passwd#1",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a\0b",
        ] {
            let name = file_name(key);
            assert!(!name.contains('/') && !name.contains('\\') && !name.contains('\0'));
            assert!(!name.starts_with('.'), "{name}");
        }
        let distinct = [
            "mid:a_b#1",
            "mid:a:b#1",
            "mid:a%5Fb#1",
            "mid:a/b#1",
            "mid:a%2Fb#1",
            ".x",
            "%2Ex",
        ];
        let names: HashSet<String> = distinct.iter().map(|k| file_name(k)).collect();
        assert_eq!(names.len(), distinct.len(), "{names:?}");
        // Long keys are shortened, and still distinct.
        let long_a = format!("mid:{}@example.test#a", "x".repeat(400));
        let long_b = format!("mid:{}@example.test#b", "x".repeat(400));
        assert!(file_name(&long_a).len() <= MAX_STEM + 4);
        assert_ne!(file_name(&long_a), file_name(&long_b));
    }

    #[tokio::test]
    async fn a_message_is_written_once_per_key_and_counts_as_tracked() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("mail");
        let sink = FileSink::open(&out, MailboxNames::default()).unwrap();
        let a = message(
            "mid:a@example.test#1",
            "a@example.test",
            b"Subject: a\r\n\r\nA\r\n",
        );
        let b = message("gm:42", "b@example.test", b"Subject: b\r\n\r\nB\r\n");
        let outcomes = sink.deliver(vec![a.clone(), b.clone()]).await.unwrap();
        assert_eq!(outcomes, [DeliveryOutcome::Stored, DeliveryOutcome::Stored]);
        assert_eq!(eml_files(&out), ["gm_42.eml", "mid_a@example.test%231.eml"]);
        assert_eq!(
            fs::read(out.join("gm_42.eml")).unwrap(),
            b"Subject: b\r\n\r\nB\r\n"
        );
        let lines = index_lines(&out);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["key"], "mid:a@example.test#1");
        assert_eq!(lines[0]["file"], "mid_a@example.test%231.eml");
        assert_eq!(lines[0]["in_reply_to"][0], "root@crm.example.com");
        assert_eq!(lines[0]["from"][0]["address"], "bob@example.test");

        // Delivered again (a repeated batch), also by a new process: stored, nothing written.
        let again = FileSink::open(&out, MailboxNames::default()).unwrap();
        let mut changed = a.clone();
        changed.raw = b"Subject: changed\r\n\r\n".to_vec().into();
        let outcomes = again.deliver(vec![changed, b]).await.unwrap();
        assert_eq!(outcomes, [DeliveryOutcome::Stored, DeliveryOutcome::Stored]);
        assert_eq!(index_lines(&out).len(), 2);
        assert_eq!(
            fs::read(out.join("mid_a@example.test%231.eml")).unwrap(),
            b"Subject: a\r\n\r\nA\r\n"
        );
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(&out).unwrap().count(), 3);

        let id = MailboxId::new();
        let tracked = again
            .tracked(
                &id,
                vec!["b@example.test".into(), "other@example.test".into()],
            )
            .await
            .unwrap();
        assert_eq!(tracked, [true, false]);
        // Lines other processes append are seen too.
        let mut c = message("gm:43", "c@example.test", b"x");
        c.in_reply_to.clear();
        sink.deliver(vec![c]).await.unwrap();
        assert_eq!(
            again
                .tracked(&id, vec!["c@example.test".into()])
                .await
                .unwrap(),
            [true]
        );
    }

    #[tokio::test]
    async fn a_file_without_its_index_line_gets_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_owned();
        let sink = FileSink::open(&out, MailboxNames::default()).unwrap();
        let a = message("gm:7", "a@example.test", b"A");
        // As if a run stopped between the rename and the index append.
        fs::write(out.join(file_name(&a.key)), b"A").unwrap();
        sink.deliver(vec![a.clone(), a]).await.unwrap();
        let lines = index_lines(&out);
        assert_eq!(lines.len(), 1, "one line per key, also within a batch");
        assert_eq!(lines[0]["file"], "gm_7.eml");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn mail_is_private_to_the_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new");
        let sink = FileSink::open(&out, MailboxNames::default()).unwrap();
        sink.deliver(vec![message("gm:1", "a@example.test", b"A")])
            .await
            .unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&out.join("gm_1.eml")), 0o600);
        assert_eq!(mode(&out.join(INDEX)), 0o600);
    }
}
