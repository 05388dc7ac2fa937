//! The message handed to the host: the correlation inputs Dynamics uses
//! (Message-ID, In-Reply-To, References, thread, sender and recipients,
//! subject, date) parsed from the headers with `mail-parser`, plus the raw
//! RFC 5322 bytes and a stable idempotency key.

use sha2::{Digest, Sha256};

use crate::model::{MailboxId, Timestamp};

/// The raw RFC 5322 bytes of a message. Each binding hands them to the host
/// without copying them through a list of numbers (`bytes` in Python, a
/// `Buffer` in Node, `ByteArray` in Kotlin).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RawMessage(pub Vec<u8>);

impl std::fmt::Debug for RawMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawMessage({} bytes)", self.0.len())
    }
}

impl std::ops::Deref for RawMessage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for RawMessage {
    fn from(bytes: Vec<u8>) -> Self {
        RawMessage(bytes)
    }
}

/// One address of a header (`From`, `To`, `Cc`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(
        module = "mailsync",
        get_all,
        set_all,
        eq,
        from_py_object,
        new = "from_fields"
    )
)]
pub struct MailAddress {
    /// The display name, if any.
    pub name: Option<String>,
    /// The address (lower-cased domain is not assumed; as sent).
    pub address: String,
}

/// A message taken in from a mailbox, as the host's sink receives it.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
#[cfg_attr(feature = "napi", napi_derive::napi(object))]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass,
    pyo3::pyclass(module = "mailsync", get_all, eq)
)]
pub struct IncomingMessage {
    /// Stable idempotency key: `gm:<X-GM-MSGID>` when the server gives a
    /// provider id (Gmail), else `mid:<Message-ID>#<hash>` or
    /// `hash:<hash>`, where the hash is a SHA-256 over the header section.
    /// The same message always gets the same key, also after the server
    /// renumbered its UIDs, so a host can dedupe on it.
    pub key: String,
    /// The mailbox it came from.
    pub mailbox_id: MailboxId,
    /// IMAP UID (with [`IncomingMessage::uid_validity`]).
    pub uid: Option<u32>,
    /// IMAP UIDVALIDITY the UID belongs to.
    pub uid_validity: Option<u32>,
    /// POP3 unique id (UIDL).
    pub uidl: Option<String>,
    /// The provider's message id (Gmail `X-GM-MSGID`, decimal).
    pub provider_id: Option<String>,
    /// The provider's thread id (Gmail `X-GM-THRID`, decimal).
    pub thread_id: Option<String>,
    /// `Message-ID`, without angle brackets.
    pub message_id: Option<String>,
    /// `In-Reply-To` ids, without angle brackets.
    pub in_reply_to: Vec<String>,
    /// `References` ids, without angle brackets, oldest first.
    pub references: Vec<String>,
    /// `From`.
    pub from: Vec<MailAddress>,
    /// `To`.
    pub to: Vec<MailAddress>,
    /// `Cc`.
    pub cc: Vec<MailAddress>,
    /// `Subject`, decoded.
    pub subject: Option<String>,
    /// `Date`.
    pub date: Option<Timestamp>,
    /// When the server received it (IMAP INTERNALDATE).
    pub received_at: Option<Timestamp>,
    /// Size in octets.
    pub size: u32,
    /// Flags as the server reported them (IMAP), e.g. `\Seen`.
    pub flags: Vec<String>,
    /// The headers could not be parsed: only `raw` (and the ids above that
    /// came from the server) are set. Such mail is delivered, never dropped.
    pub unparsed: bool,
    /// The whole message.
    pub raw: RawMessage,
}

/// What the server told us about a message besides its bytes.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerFacts {
    pub uid: Option<u32>,
    pub uid_validity: Option<u32>,
    pub uidl: Option<String>,
    pub provider_id: Option<u64>,
    pub thread_id: Option<u64>,
    pub received_at: Option<Timestamp>,
    pub size: Option<u32>,
    pub flags: Vec<String>,
}

/// The header section of a raw message (up to the first empty line).
pub(crate) fn header_section(raw: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < raw.len() {
        if raw[i..].starts_with(b"\r\n\r\n") {
            return &raw[..i + 2];
        }
        if raw[i..].starts_with(b"\n\n") {
            return &raw[..i + 1];
        }
        i += 1;
    }
    raw
}

/// The idempotency key of a message (see [`IncomingMessage::key`]).
pub(crate) fn message_key(provider_id: Option<u64>, header: &[u8]) -> String {
    if let Some(id) = provider_id {
        return format!("gm:{id}");
    }
    let digest = Sha256::digest(header);
    let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let parsed = mail_parser::MessageParser::default().parse_headers(header);
    match parsed.as_ref().and_then(|m| m.message_id()) {
        Some(id) => format!("mid:{id}#{hash}"),
        None => format!("hash:{hash}"),
    }
}

fn ids(value: &mail_parser::HeaderValue<'_>) -> Vec<String> {
    if let Some(list) = value.as_text_list() {
        return list.iter().map(|s| s.to_string()).collect();
    }
    value
        .as_text()
        .map(|s| vec![s.to_owned()])
        .unwrap_or_default()
}

fn addresses(value: Option<&mail_parser::Address<'_>>) -> Vec<MailAddress> {
    value
        .map(|a| {
            a.iter()
                .filter_map(|addr| {
                    Some(MailAddress {
                        name: addr.name.as_ref().map(|n| n.to_string()),
                        address: addr.address.as_ref()?.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Builds the host's record from the raw bytes and what the server said.
pub(crate) fn incoming_message(
    mailbox: &MailboxId,
    raw: Vec<u8>,
    facts: ServerFacts,
) -> IncomingMessage {
    let header = header_section(&raw);
    let key = message_key(facts.provider_id, header);
    let parsed = mail_parser::MessageParser::default().parse_headers(header);
    let size = facts
        .size
        .unwrap_or_else(|| u32::try_from(raw.len()).unwrap_or(u32::MAX));
    let mut message = IncomingMessage {
        key,
        mailbox_id: mailbox.clone(),
        uid: facts.uid,
        uid_validity: facts.uid_validity,
        uidl: facts.uidl,
        provider_id: facts.provider_id.map(|v| v.to_string()),
        thread_id: facts.thread_id.map(|v| v.to_string()),
        message_id: None,
        in_reply_to: Vec::new(),
        references: Vec::new(),
        from: Vec::new(),
        to: Vec::new(),
        cc: Vec::new(),
        subject: None,
        date: None,
        received_at: facts.received_at,
        size,
        flags: facts.flags,
        unparsed: true,
        raw: RawMessage(Vec::new()),
    };
    // Garbage parses as a "header" with a garbage name: require one real one.
    let real = |m: &mail_parser::Message<'_>| {
        m.headers().iter().any(|h| {
            let name = h.name.as_str();
            !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
        })
    };
    if let Some(m) = parsed.filter(real) {
        message.message_id = m.message_id().map(str::to_owned);
        message.in_reply_to = ids(m.in_reply_to());
        message.references = ids(m.references());
        message.from = addresses(m.from());
        message.to = addresses(m.to());
        message.cc = addresses(m.cc());
        message.subject = m.subject().map(str::to_owned);
        message.date = m
            .date()
            .map(|d| Timestamp::from_unix_millis(d.to_timestamp().saturating_mul(1000)));
        message.unparsed = false;
    }
    message.raw = RawMessage(raw);
    message
}

/// The headers the incoming filter decides from (the body is not
/// downloaded for that).
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderFacts {
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub from: Vec<String>,
}

pub(crate) fn header_facts(header: &[u8]) -> HeaderFacts {
    match mail_parser::MessageParser::default().parse_headers(header) {
        Some(m) => HeaderFacts {
            in_reply_to: ids(m.in_reply_to()),
            references: ids(m.references()),
            from: addresses(m.from())
                .into_iter()
                .map(|a| a.address.to_ascii_lowercase())
                .collect(),
        },
        None => HeaderFacts::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIL: &[u8] = b"Message-ID: <a1@example.test>\r\n\
In-Reply-To: <root@crm.example.com>\r\n\
References: <root@crm.example.com> <mid@crm.example.com>\r\n\
From: \"Bob B\" <bob@example.test>\r\n\
To: alice@example.test, Carol <carol@example.test>\r\n\
Cc: dave@example.test\r\n\
Subject: =?UTF-8?Q?R=C3=A9union?=\r\n\
Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\
\r\n\
Body\r\n";

    #[test]
    fn the_correlation_fields_come_from_the_headers() {
        let id = MailboxId::new();
        let m = incoming_message(
            &id,
            MAIL.to_vec(),
            ServerFacts {
                uid: Some(7),
                ..ServerFacts::default()
            },
        );
        assert!(!m.unparsed);
        assert_eq!(m.message_id.as_deref(), Some("a1@example.test"));
        assert_eq!(m.in_reply_to, ["root@crm.example.com"]);
        assert_eq!(
            m.references,
            ["root@crm.example.com", "mid@crm.example.com"]
        );
        assert_eq!(m.from[0].address, "bob@example.test");
        assert_eq!(m.from[0].name.as_deref(), Some("Bob B"));
        assert_eq!(m.to.len(), 2);
        assert_eq!(m.cc[0].address, "dave@example.test");
        assert_eq!(m.subject.as_deref(), Some("Réunion"));
        assert_eq!(m.date.unwrap().unix_millis(), 1_796_119_200_000);
        assert_eq!(m.size as usize, MAIL.len());
        assert_eq!(&*m.raw, MAIL);
        assert!(m.key.starts_with("mid:a1@example.test#"), "{}", m.key);
    }

    #[test]
    fn keys_are_stable_and_prefer_the_provider_id() {
        let h = header_section(MAIL);
        assert_eq!(message_key(None, h), message_key(None, h));
        assert_eq!(
            message_key(Some(1_278_455_344_230_334_865), h),
            "gm:1278455344230334865"
        );
        // The body does not change the key; a header does.
        let other = b"Message-ID: <a1@example.test>\r\nSubject: x\r\n\r\n";
        assert_ne!(
            message_key(None, h),
            message_key(None, header_section(other))
        );
        assert!(message_key(None, b"Subject: no id\r\n\r\n").starts_with("hash:"));
    }

    #[test]
    fn garbage_is_delivered_raw_and_flagged() {
        let id = MailboxId::new();
        let junk = vec![0xff, 0xfe, 0x00, 0x01];
        let m = incoming_message(&id, junk.clone(), ServerFacts::default());
        assert!(m.unparsed);
        assert_eq!(&*m.raw, &junk[..]);
        assert!(m.key.starts_with("hash:"));
    }
}
