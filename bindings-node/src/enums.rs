//! Core enums as TypeScript string unions of the core's serde snake_case strings.

use mailsync::model;
use napi_derive::napi;

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident => $core:ty { $($(#[$vattr:meta])* $variant:ident),* $(,)? }) => {
        $(#[$doc])*
        #[napi(string_enum = "snake_case")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vattr])* $variant),*
        }

        impl From<$core> for $name {
            fn from(value: $core) -> Self {
                match value {
                    $(<$core>::$variant => $name::$variant),*
                }
            }
        }

        impl From<$name> for $core {
            fn from(value: $name) -> Self {
                match value {
                    $($name::$variant => <$core>::$variant),*
                }
            }
        }
    };
}

string_enum!(
    /// Transport security: TLS from the first byte, STARTTLS, or none (loopback only).
    Security => model::Security { Tls, StartTls, Plaintext }
);
string_enum!(
    /// Protocol used for incoming mail.
    IncomingProtocol => model::IncomingProtocol { Imap, #[napi(value = "pop3")] Pop3 }
);
string_enum!(
    /// What kind of server a profile talks to.
    ServerType => model::ServerType { Gmail, ImapSmtp, #[napi(value = "pop3_smtp")] Pop3Smtp }
);
string_enum!(
    /// Consent screen user type.
    UserType => model::UserType { Internal, External }
);
string_enum!(
    /// Consent screen publishing status.
    PublishingStatus => model::PublishingStatus { Testing, Production }
);
string_enum!(
    /// Google Cloud OAuth client type (always `web` for server-side sync).
    ApplicationType => model::ApplicationType { Web }
);
string_enum!(
    /// How incoming mail reaches the CRM.
    IncomingDelivery => model::IncomingDelivery { None, ServerSideSync, EmailRouter, ForwardMailbox }
);
string_enum!(
    /// How outgoing mail leaves the CRM.
    OutgoingDelivery => model::OutgoingDelivery { None, ServerSideSync, EmailRouter }
);
string_enum!(
    /// Email address approval.
    ApprovalStatus => model::ApprovalStatus { Empty, Approved, PendingApproval, Rejected }
);
string_enum!(
    /// How serious an alert is.
    AlertLevel => model::AlertLevel { Info, Warning, Error }
);
string_enum!(
    /// Outcome of a test.
    TestOutcome => model::TestOutcome { Success, Failure, Warning }
);
