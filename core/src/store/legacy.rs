//! Reading records written before runtime state had its own tables: the
//! mailbox JSON then carried `connection`, `incoming_test`/`outgoing_test`,
//! the enabled flags and `alerts`. Used once, when such a database opens.

use serde::Deserialize;

use crate::error::ErrorCode;
use crate::lifecycle::{DirectionState, DirectionStatus, GrantStatus, MailboxState, TestStatus};
use crate::model::{Alert, Authentication, MailboxId, ServerProfile, Timestamp};
use crate::oauth::provider::{GOOGLE_ISSUER, GOOGLE_TOKEN_ENDPOINT};

#[derive(Deserialize, Default)]
#[serde(default)]
struct OldMailbox {
    connection: Option<OldConnection>,
    incoming_test: Option<OldTest>,
    outgoing_test: Option<OldTest>,
    incoming_enabled: Option<bool>,
    outgoing_enabled: Option<bool>,
    alerts: Vec<Alert>,
}

#[derive(Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum OldConnection {
    NotConnected,
    AwaitingConsent {},
    Connected { account: String, since: Timestamp },
    NeedsReconsent { code: String, reason: String },
}

#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum OldTest {
    NotRun,
    Success {
        at: Timestamp,
    },
    Failure {
        at: Timestamp,
        code: String,
        reason: String,
    },
}

fn direction(test: Option<OldTest>, enabled: Option<bool>) -> DirectionState {
    let last_test = match test {
        Some(OldTest::Success { at }) => TestStatus::Success { at },
        Some(OldTest::Failure { at, code, reason }) => TestStatus::Failure {
            at,
            code: ErrorCode::parse(&code).unwrap_or(ErrorCode::Internal),
            reason,
        },
        _ => TestStatus::NotRun {},
    };
    let status = match (&last_test, enabled) {
        (TestStatus::Success { at }, Some(true)) => DirectionStatus::Enabled { since: *at },
        (TestStatus::Failure { at, code, reason }, Some(false)) => DirectionStatus::Disabled {
            code: *code,
            reason: reason.clone(),
            since: *at,
        },
        _ => DirectionStatus::NotTested {},
    };
    DirectionState { status, last_test }
}

/// The runtime state an old mailbox record described.
pub(crate) fn state_from_mailbox_json(id: &MailboxId, data: &str) -> MailboxState {
    let old: OldMailbox = serde_json::from_str(data).unwrap_or_default();
    let mut state = MailboxState::new(id.clone());
    state.grant = match old.connection {
        Some(OldConnection::Connected { account, since }) => {
            GrantStatus::Connected { account, since }
        }
        Some(OldConnection::NeedsReconsent { code, reason }) => GrantStatus::NeedsReconsent {
            code: ErrorCode::parse(&code).unwrap_or(ErrorCode::TokenRevoked),
            reason,
            since: Timestamp::now_utc(),
        },
        _ => GrantStatus::NotConnected {},
    };
    state.incoming = direction(old.incoming_test, old.incoming_enabled);
    state.outgoing = direction(old.outgoing_test, old.outgoing_enabled);
    state
}

/// The alerts an old mailbox record carried.
pub(crate) fn alerts_from_mailbox_json(data: &str) -> Vec<Alert> {
    serde_json::from_str::<OldMailbox>(data)
        .map(|m| m.alerts)
        .unwrap_or_default()
}

/// What an old grant is bound to: the profile's issuer, client and token
/// endpoint (empty when it must be discovered again).
pub(crate) fn binding_of(profile: &ServerProfile) -> Option<(String, String, String)> {
    match &profile.authentication {
        Authentication::GmailOAuth { app } => Some((
            GOOGLE_ISSUER.to_owned(),
            app.client_id.clone(),
            GOOGLE_TOKEN_ENDPOINT.to_owned(),
        )),
        Authentication::OAuthProvider { issuer, app, .. } => Some((
            issuer.trim_end_matches('/').to_owned(),
            app.client_id.clone(),
            String::new(),
        )),
        _ => None,
    }
}
