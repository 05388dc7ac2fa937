//! One public error type with stable codes.
//!
//! Every failure the library reports is an [`Error`]: a stable snake_case
//! [`ErrorCode`] (identical in Rust, Python, Node and Kotlin/Swift), a message
//! written for a person, the field at fault for validation errors, and whether
//! retrying later can help ([`Error::is_transient`]). Codes are named for what
//! went wrong; [`ErrorCode::next_action`] says what the caller should do next.
//!
//! Messages never contain secrets: constructors take only non-secret context.

use std::fmt;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident => $code:literal, transient: $transient:literal, action: $action:literal; )*) => {
        /// Stable, language-independent error codes.
        ///
        /// The string form ([`ErrorCode::as_str`]) is part of the public API in
        /// every binding and never changes meaning; docs/errors.md lists them all.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
        #[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in documentation order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The stable snake_case string, e.g. `"capacity_exceeded"`.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// Whether an error with this code may succeed when retried later
            /// without anyone changing anything.
            pub const fn is_transient(self) -> bool {
                match self { $(ErrorCode::$variant => $transient,)* }
            }

            /// What the user or admin should do about it, in one sentence.
            pub const fn next_action(self) -> &'static str {
                match self { $(ErrorCode::$variant => $action,)* }
            }

            /// Parses the string form; `None` for unknown codes.
            pub fn parse(code: &str) -> Option<ErrorCode> {
                match code { $($code => Some(ErrorCode::$variant),)* _ => None }
            }
        }

        /// An [`Error`] as UniFFI hosts see it: one variant per code (a
        /// sealed exception class in Kotlin), with the same fields in each.
        /// `detail` is the message (Kotlin's `message` is taken).
        #[cfg(feature = "uniffi")]
        #[derive(Debug, thiserror::Error, uniffi::Error)]
        pub enum MailsyncError {
            $(
                $(#[$doc])*
                #[error("{detail} ({code})")]
                $variant {
                    /// The stable code.
                    code: String,
                    /// The message, for people.
                    detail: String,
                    /// The field at fault, for validation errors.
                    field: Option<String>,
                    /// Whether retrying later, unchanged, may succeed.
                    transient: bool,
                    /// What to do next, in one sentence.
                    next_action: String,
                },
            )*
        }

        #[cfg(feature = "uniffi")]
        impl From<Error> for MailsyncError {
            fn from(e: Error) -> Self {
                let code = e.code();
                let field = e.field().map(str::to_owned);
                let detail = e.message().to_owned();
                match code {
                    $(ErrorCode::$variant => MailsyncError::$variant {
                        code: $code.to_owned(),
                        detail,
                        field,
                        transient: $transient,
                        next_action: $action.to_owned(),
                    },)*
                }
            }
        }
    };
}

error_codes! {
    /// A value does not satisfy a rule; [`Error::field`] names the field.
    Validation => "validation", transient: false, action: "Correct the named field and try again.";
    /// The server profile already holds as many mailboxes as it may (100 for Gmail OAuth).
    CapacityExceeded => "capacity_exceeded", transient: false, action: "Create another server profile with the same OAuth client, or allow spill-over.";
    /// The named profile, mailbox or record does not exist.
    NotFound => "not_found", transient: false, action: "Check the id or name; list the existing records.";
    /// A record with the same unique name or address exists.
    AlreadyExists => "already_exists", transient: false, action: "Use another name or address, or update the existing record.";
    /// A profile cannot be deleted while mailboxes use it.
    ProfileInUse => "profile_in_use", transient: false, action: "Move or delete the profile's mailboxes first.";
    /// The consent screen is External + Testing and the address is not a listed test user.
    NotATestUser => "not_a_test_user", transient: false, action: "Add the address as a test user on the OAuth consent screen, or publish the app.";
    /// The seal key does not open the secrets in this store.
    SealKeyMismatch => "seal_key_mismatch", transient: false, action: "Open the store with the key it was created with; nothing was changed.";
    /// The store failed (I/O, database, corrupt record).
    Store => "store", transient: false, action: "Check the database file or server and its permissions.";
    /// The store is busy or temporarily unreachable.
    StoreUnavailable => "store_unavailable", transient: true, action: "Retry later; the database was busy or unreachable.";
    /// The user declined consent (`access_denied`).
    ConsentDenied => "consent_denied", transient: false, action: "Ask the user to connect again and allow access to their mail.";
    /// A Workspace admin policy blocks the app (`admin_policy_enforced`).
    AdminPolicy => "admin_policy", transient: false, action: "Ask the Google Workspace admin to allow this OAuth client.";
    /// An Internal app was used by an account outside the organization (`org_internal`).
    OrgInternal => "org_internal", transient: false, action: "Use an account of the app's organization, or make the consent screen External.";
    /// The authorization server reported another error on the redirect.
    ConsentFailed => "consent_failed", transient: false, action: "Check the OAuth client's redirect URI and settings, then connect again.";
    /// The `state` of a callback is missing, unknown, expired or already used.
    StateInvalid => "state_invalid", transient: false, action: "Start the connection again from the CRM; the consent link was stale or tampered with.";
    /// The account that consented is not the mailbox's address.
    AccountMismatch => "account_mismatch", transient: false, action: "Sign in to Google with the mailbox's own address and connect again.";
    /// The user unchecked the mail scope on the consent screen.
    ScopeNotGranted => "scope_not_granted", transient: false, action: "Connect again and leave 'Read, compose, send and delete your email' checked.";
    /// The refresh token was revoked or expired (`invalid_grant`).
    TokenRevoked => "token_revoked", transient: false, action: "Ask the mailbox owner to connect to Gmail again (re-consent).";
    /// The OAuth client id or secret was refused (`invalid_client`).
    InvalidClient => "invalid_client", transient: false, action: "Fix the client id and secret on the server profile.";
    /// The mailbox has no tokens yet.
    NotConnected => "not_connected", transient: false, action: "Connect the mailbox to Gmail first.";
    /// The authorization server answered something unexpected.
    ProviderError => "provider_error", transient: false, action: "Check the OAuth provider configuration; see the message for its answer.";
    /// The authorization server is down or overloaded (5xx, unreachable).
    ProviderUnavailable => "provider_unavailable", transient: true, action: "Retry later; the OAuth provider is unavailable.";
    /// The mail server refused the credentials or token.
    AuthRejected => "auth_rejected", transient: false, action: "Reconnect the mailbox; if it persists, check the account and the OAuth scope.";
    /// The account may not use this protocol (e.g. IMAP disabled in Gmail settings).
    ProtocolDisabled => "protocol_disabled", transient: false, action: "Enable IMAP (or POP) in the Gmail settings of the account.";
    /// The server does not offer the needed authentication mechanism.
    MechanismUnsupported => "mechanism_unsupported", transient: false, action: "Check the server host and port; the server does not offer XOAUTH2/OAUTHBEARER.";
    /// The server could not be reached.
    Network => "network", transient: true, action: "Check the host, port and network path; the sync engine retries it.";
    /// TLS failed (e.g. the certificate is not trusted or not valid for the host).
    Tls => "tls", transient: false, action: "Check the host name and the server's certificate chain.";
    /// A step took longer than the profile's connection timeout.
    Timeout => "timeout", transient: true, action: "Retry later, or raise the profile's connection timeout.";
    /// The mail server is temporarily unable to authenticate or serve (e.g. IMAP `NO [UNAVAILABLE]`).
    ServerUnavailable => "server_unavailable", transient: true, action: "Retry later; the mail server reported a temporary failure.";
    /// The server broke the protocol.
    ProtocolError => "protocol_error", transient: false, action: "Check that the host and port belong to the expected kind of server.";
    /// The SMTP server deferred the message (4xx).
    SendDeferred => "send_deferred", transient: true, action: "It will be retried later.";
    /// The SMTP server refused the message (5xx).
    SendRejected => "send_rejected", transient: false, action: "Check the sender and recipients; the server refused the message.";
    /// An outgoing message's sender (`From`) is not the mailbox's own address; it was refused before connecting.
    SenderNotAllowed => "sender_not_allowed", transient: false, action: "Send from the mailbox's own address; use the mailbox of the address the message should come from.";
    /// Plain-text authentication over an unencrypted connection was refused.
    InsecureConnection => "insecure_connection", transient: false, action: "Use TLS or STARTTLS; plaintext is allowed only on loopback when the profile allows it.";
    /// The mailbox's grant was issued by another issuer or for another OAuth client than its profile now names; nothing was sent anywhere.
    GrantMismatch => "grant_mismatch", transient: false, action: "Ask the mailbox owner to connect again, so the grant matches the profile's OAuth client.";
    /// The profile sends Gmail OAuth tokens to a server that is not Google's.
    HostNotAllowed => "host_not_allowed", transient: false, action: "Use Google's mail hosts (imap.gmail.com, pop.gmail.com, smtp.gmail.com) on a Gmail OAuth profile.";
    /// Another writer changed the record first, or the state moved on; nothing was written.
    Conflict => "conflict", transient: true, action: "Reload the record and try again; it was changed meanwhile.";
    /// The host's message sink (or outbox) failed or timed out; the cursor did not move.
    SinkFailed => "sink_failed", transient: true, action: "Fix the host's sink; the same messages are delivered again in the next cycle.";
    /// The direction is not enabled (never tested, disabled after failures, or set to none).
    NotEnabled => "not_enabled", transient: false, action: "Run Test & Enable on the mailbox (after fixing what disabled it).";
    /// A message is larger than the engine's size limit; it was recorded and skipped, not downloaded.
    MessageTooLarge => "message_too_large", transient: false, action: "Raise the engine's message size limit, or handle the message in the mail client.";
    /// A bug in mailsync (including a caught panic).
    Internal => "internal", transient: false, action: "Report this as a bug in mailsync, with the message.";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error every public operation returns.
///
/// Match on [`Error::code`]; show [`Error::message`] (or `Display`) to people.
#[derive(Debug)]
pub struct Error {
    code: ErrorCode,
    message: String,
    field: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error with a code and a person-readable message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            field: None,
            source: None,
        }
    }

    /// A validation error naming the field and the rule it breaks.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{field}: {}", message.into());
        Error {
            code: ErrorCode::Validation,
            message,
            field: Some(field),
            source: None,
        }
    }

    /// A `not_found` error for a record kind and the key that was looked up.
    pub fn not_found(kind: &str, key: impl fmt::Display) -> Self {
        Error::new(
            ErrorCode::NotFound,
            format!("{kind} '{key}' does not exist"),
        )
    }

    /// Names the field at fault (for errors other than `validation` that
    /// still concern one field).
    pub fn set_field(&mut self, field: impl Into<String>) {
        self.field = Some(field.into());
    }

    /// Attaches an underlying cause (kept for `source()`, never shown in the message).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message, for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// For validation errors, the field at fault (e.g. `incoming.port`).
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// Whether retrying later, unchanged, may succeed.
    pub fn is_transient(&self) -> bool {
        self.code.is_transient()
    }

    /// What to do next, in one sentence.
    pub fn next_action(&self) -> &'static str {
        self.code.next_action()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        let code = match &err {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => ErrorCode::StoreUnavailable,
            sqlx::Error::Database(db) if db.message().contains("database is locked") => {
                ErrorCode::StoreUnavailable
            }
            // PostgreSQL: serialization failure, deadlock detected, server
            // shutting down, too many connections, connection failures.
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    matches!(
                        &*c,
                        "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300"
                    ) || c.starts_with("08")
                }) =>
            {
                ErrorCode::StoreUnavailable
            }
            _ => ErrorCode::Store,
        };
        Error::new(code, format!("store: {err}"))
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        Error::new(ErrorCode::Store, format!("store migration: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }

    #[test]
    fn validation_names_field() {
        let e = Error::validation("incoming.port", "must be between 1 and 65535");
        assert_eq!(e.code(), ErrorCode::Validation);
        assert_eq!(e.field(), Some("incoming.port"));
        assert!(e.to_string().contains("incoming.port"));
        assert!(!e.is_transient());
    }

    #[test]
    fn transient_codes() {
        assert!(ErrorCode::Network.is_transient());
        assert!(ErrorCode::Timeout.is_transient());
        assert!(ErrorCode::SendDeferred.is_transient());
        assert!(!ErrorCode::TokenRevoked.is_transient());
    }
}
