//! The mailbox lifecycle as code: one table of rules, one function that
//! applies events.
//!
//! A mailbox's runtime state ([`MailboxState`]) is three small machines:
//!
//! * **consent**: whether a consent URL is out and waiting for its
//!   redirect ([`ConsentPhase`]);
//! * **grant**: whether the mailbox holds tokens that work
//!   ([`GrantStatus`]), kept apart from the pending consent, so a consent
//!   that fails leaves an existing grant untouched;
//! * **incoming** and **outgoing**, one per direction
//!   ([`DirectionStatus`]): not tested, enabled, retrying after transient
//!   failures, or disabled.
//!
//! Every change goes through [`apply`]: it looks the event up in the
//! machine's rules ([`CONSENT_RULES`], [`GRANT_RULES`],
//! [`DIRECTION_RULES`]); an event a machine has rules for but none from its
//! current phase is refused with `conflict` (the state moved on under the
//! caller, e.g. the engine reporting a sync of a direction an admin has
//! just disabled). The alerts written for people and the events pushed to
//! the host are derived from the changes, in one place ([`alerts_for`],
//! [`notices_for`]). docs/lifecycle.md draws the machines from the same
//! tables ([`diagram`]); a test keeps the two equal.
//!
//! The failure policy of the directions follows Dynamics 365: after a
//! transient failure the direction is `Retrying` and the sync engine tries
//! it again when its backoff has passed (by default 10 times, 5 minutes
//! apart); when the retries are spent, or on a permanent failure, the
//! direction is disabled with an alert ([`FailurePolicy`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};
use crate::model::{AlertLevel, MailboxId, Timestamp};

/// Which way mail flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
pub enum Direction {
    /// Mail read from the server (IMAP/POP3).
    Incoming,
    /// Mail sent through the server (SMTP).
    Outgoing,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Direction::Incoming, Direction::Outgoing];

    /// `"incoming"` or `"outgoing"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }
}

/// A consent URL waiting for its redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
pub struct PendingConsent {
    /// When the consent URL was issued.
    pub started_at: Timestamp,
    /// After this instant the redirect is refused (`state_invalid`).
    pub expires_at: Timestamp,
}

/// Whether the mailbox holds an OAuth grant that works.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(
    feature = "napi",
    napi_derive::napi(discriminant = "status", discriminant_case = "snake_case")
)]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass_complex_enum,
    pyo3::pyclass(module = "mailsync", eq, from_py_object)
)]
pub enum GrantStatus {
    /// No grant: never connected, or disconnected.
    NotConnected {},
    /// Tokens are stored and work as far as the library knows.
    Connected {
        /// The account that consented.
        account: String,
        /// When consent completed.
        since: Timestamp,
    },
    /// The grant stopped working; the owner must consent again.
    NeedsReconsent {
        /// Why (`token_revoked`, `grant_mismatch`).
        code: ErrorCode,
        /// Explanation and likely cause, for people.
        reason: String,
        /// Since when.
        since: Timestamp,
    },
}

impl Default for GrantStatus {
    fn default() -> Self {
        GrantStatus::NotConnected {}
    }
}

/// The outcome of the last Test & Enable of one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(
    feature = "napi",
    napi_derive::napi(discriminant = "status", discriminant_case = "snake_case")
)]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass_complex_enum,
    pyo3::pyclass(module = "mailsync", eq, from_py_object)
)]
pub enum TestStatus {
    /// Never tested.
    NotRun {},
    /// Passed.
    Success {
        /// When.
        at: Timestamp,
    },
    /// Failed.
    Failure {
        /// When.
        at: Timestamp,
        /// The failure's code.
        code: ErrorCode,
        /// What went wrong.
        reason: String,
    },
}

impl Default for TestStatus {
    fn default() -> Self {
        TestStatus::NotRun {}
    }
}

/// Whether a direction syncs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(
    feature = "napi",
    napi_derive::napi(discriminant = "status", discriminant_case = "snake_case")
)]
#[cfg_attr(
    feature = "python",
    pyo3_stub_gen::derive::gen_stub_pyclass_complex_enum,
    pyo3::pyclass(module = "mailsync", eq, from_py_object)
)]
pub enum DirectionStatus {
    /// Not tested yet: nothing syncs until Test & Enable passes.
    NotTested {},
    /// Syncing.
    Enabled {
        /// Since when.
        since: Timestamp,
    },
    /// Transient failures; a running sync engine tries again at
    /// `next_attempt`.
    Retrying {
        /// Consecutive failures so far.
        failures: u32,
        /// The last failure's code.
        code: ErrorCode,
        /// The last failure, for people.
        reason: String,
        /// When the next attempt is due.
        next_attempt: Timestamp,
    },
    /// Stopped until someone acts (Test & Enable again).
    Disabled {
        /// Why.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
        /// Since when.
        since: Timestamp,
    },
}

impl Default for DirectionStatus {
    fn default() -> Self {
        DirectionStatus::NotTested {}
    }
}

/// One direction's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
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
pub struct DirectionState {
    /// Whether it syncs.
    pub status: DirectionStatus,
    /// The last Test & Enable.
    pub last_test: TestStatus,
}

/// A mailbox's runtime state, apart from its configuration. Versioned: two
/// writers cannot both base a change on the same version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
pub struct MailboxState {
    /// The mailbox.
    pub mailbox_id: MailboxId,
    /// The consent waiting for its redirect, if any.
    pub pending_consent: Option<PendingConsent>,
    /// The OAuth grant.
    pub grant: GrantStatus,
    /// Incoming mail.
    pub incoming: DirectionState,
    /// Outgoing mail.
    pub outgoing: DirectionState,
    /// Write version; only grows, never reused (set by the store).
    pub version: i64,
}

impl MailboxState {
    /// The state of a new mailbox: nothing pending, no grant, not tested.
    pub fn new(mailbox_id: MailboxId) -> MailboxState {
        MailboxState {
            mailbox_id,
            pending_consent: None,
            grant: GrantStatus::NotConnected {},
            incoming: DirectionState::default(),
            outgoing: DirectionState::default(),
            version: 0,
        }
    }

    /// One direction's state.
    pub fn direction(&self, direction: Direction) -> &DirectionState {
        match direction {
            Direction::Incoming => &self.incoming,
            Direction::Outgoing => &self.outgoing,
        }
    }

    fn direction_mut(&mut self, direction: Direction) -> &mut DirectionState {
        match direction {
            Direction::Incoming => &mut self.incoming,
            Direction::Outgoing => &mut self.outgoing,
        }
    }

    /// The consent phase at `now` (an expired consent no longer counts).
    pub fn consent_phase(&self, now: Timestamp) -> ConsentPhase {
        match &self.pending_consent {
            Some(p) if p.expires_at > now => ConsentPhase::Pending,
            _ => ConsentPhase::NoConsent,
        }
    }
}

/// Something that happened to a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// A consent URL was issued.
    ConsentStarted {
        /// When it expires.
        expires_at: Timestamp,
    },
    /// The redirect came back, the grant passed its checks and was stored.
    ConsentCompleted {
        /// The account that consented.
        account: String,
    },
    /// The redirect came back with a refusal or a grant that failed its
    /// checks; nothing was stored.
    ConsentFailed {
        /// Why.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    },
    /// The access token was refreshed.
    Refreshed,
    /// The provider refused the grant (`invalid_grant`), or it belongs to
    /// another issuer or client than the profile's.
    GrantRevoked {
        /// `token_revoked` or `grant_mismatch`.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    },
    /// The grant was revoked and deleted on request.
    Disconnected,
    /// A direction passed Test & Enable.
    TestPassed {
        /// Which direction.
        direction: Direction,
    },
    /// A direction failed Test & Enable.
    TestFailed {
        /// Which direction.
        direction: Direction,
        /// The failure's code.
        code: ErrorCode,
        /// What went wrong.
        reason: String,
    },
    /// A sync cycle of a direction succeeded.
    SyncSucceeded {
        /// Which direction.
        direction: Direction,
    },
    /// A sync cycle of a direction failed.
    SyncFailed {
        /// Which direction.
        direction: Direction,
        /// The failure's code (its transience decides the policy).
        code: ErrorCode,
        /// What went wrong.
        reason: String,
    },
}

/// The kind of a [`LifecycleEvent`], as the rule tables name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// [`LifecycleEvent::ConsentStarted`].
    ConsentStarted,
    /// [`LifecycleEvent::ConsentCompleted`].
    ConsentCompleted,
    /// [`LifecycleEvent::ConsentFailed`].
    ConsentFailed,
    /// [`LifecycleEvent::Refreshed`].
    Refreshed,
    /// [`LifecycleEvent::GrantRevoked`].
    GrantRevoked,
    /// [`LifecycleEvent::Disconnected`].
    Disconnected,
    /// [`LifecycleEvent::TestPassed`].
    TestPassed,
    /// [`LifecycleEvent::TestFailed`].
    TestFailed,
    /// [`LifecycleEvent::SyncSucceeded`].
    SyncSucceeded,
    /// [`LifecycleEvent::SyncFailed`].
    SyncFailed,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 10] = [
        EventKind::ConsentStarted,
        EventKind::ConsentCompleted,
        EventKind::ConsentFailed,
        EventKind::Refreshed,
        EventKind::GrantRevoked,
        EventKind::Disconnected,
        EventKind::TestPassed,
        EventKind::TestFailed,
        EventKind::SyncSucceeded,
        EventKind::SyncFailed,
    ];

    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::ConsentStarted => "consent_started",
            EventKind::ConsentCompleted => "consent_completed",
            EventKind::ConsentFailed => "consent_failed",
            EventKind::Refreshed => "refreshed",
            EventKind::GrantRevoked => "grant_revoked",
            EventKind::Disconnected => "disconnected",
            EventKind::TestPassed => "test_passed",
            EventKind::TestFailed => "test_failed",
            EventKind::SyncSucceeded => "sync_succeeded",
            EventKind::SyncFailed => "sync_failed",
        }
    }
}

impl LifecycleEvent {
    /// Its kind.
    pub fn kind(&self) -> EventKind {
        match self {
            LifecycleEvent::ConsentStarted { .. } => EventKind::ConsentStarted,
            LifecycleEvent::ConsentCompleted { .. } => EventKind::ConsentCompleted,
            LifecycleEvent::ConsentFailed { .. } => EventKind::ConsentFailed,
            LifecycleEvent::Refreshed => EventKind::Refreshed,
            LifecycleEvent::GrantRevoked { .. } => EventKind::GrantRevoked,
            LifecycleEvent::Disconnected => EventKind::Disconnected,
            LifecycleEvent::TestPassed { .. } => EventKind::TestPassed,
            LifecycleEvent::TestFailed { .. } => EventKind::TestFailed,
            LifecycleEvent::SyncSucceeded { .. } => EventKind::SyncSucceeded,
            LifecycleEvent::SyncFailed { .. } => EventKind::SyncFailed,
        }
    }

    /// The direction a direction event is about.
    pub fn direction(&self) -> Option<Direction> {
        match self {
            LifecycleEvent::TestPassed { direction }
            | LifecycleEvent::TestFailed { direction, .. }
            | LifecycleEvent::SyncSucceeded { direction }
            | LifecycleEvent::SyncFailed { direction, .. } => Some(*direction),
            _ => None,
        }
    }

    fn failure(&self) -> Option<(ErrorCode, &str)> {
        match self {
            LifecycleEvent::ConsentFailed { code, reason }
            | LifecycleEvent::GrantRevoked { code, reason }
            | LifecycleEvent::TestFailed { code, reason, .. }
            | LifecycleEvent::SyncFailed { code, reason, .. } => Some((*code, reason.as_str())),
            _ => None,
        }
    }
}

/// The consent machine's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsentPhase {
    /// No consent URL is out.
    NoConsent,
    /// A consent URL is out and has not expired.
    Pending,
}

/// The grant machine's phases (the variants of [`GrantStatus`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantPhase {
    /// [`GrantStatus::NotConnected`].
    None,
    /// [`GrantStatus::Connected`].
    Connected,
    /// [`GrantStatus::NeedsReconsent`].
    NeedsReconsent,
}

/// A direction machine's phases (the variants of [`DirectionStatus`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DirectionPhase {
    /// [`DirectionStatus::NotTested {}`].
    NotTested,
    /// [`DirectionStatus::Enabled`].
    Enabled,
    /// [`DirectionStatus::Retrying`].
    Retrying,
    /// [`DirectionStatus::Disabled`].
    Disabled,
}

/// A condition on a rule, checked against the event and the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// No condition.
    Always,
    /// The failure is transient and retries are left.
    RetriesLeft,
    /// The failure is transient and this was the last retry.
    RetriesSpent,
    /// The failure is permanent.
    Permanent,
}

impl Guard {
    fn label(self) -> Option<&'static str> {
        match self {
            Guard::Always => None,
            Guard::RetriesLeft => Some("transient, retries left"),
            Guard::RetriesSpent => Some("transient, retries spent"),
            Guard::Permanent => Some("permanent"),
        }
    }
}

/// One rule: in phase `from`, `event` (when `guard` holds) leads to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule<P> {
    /// The phase before.
    pub from: P,
    /// The event.
    pub event: EventKind,
    /// The condition.
    pub guard: Guard,
    /// The phase after.
    pub to: P,
}

const fn rule<P>(from: P, event: EventKind, guard: Guard, to: P) -> Rule<P> {
    Rule {
        from,
        event,
        guard,
        to,
    }
}

use ConsentPhase as C;
use DirectionPhase as D;
use EventKind as E;
use GrantPhase as G;
use Guard::{Always, Permanent, RetriesLeft, RetriesSpent};

/// The consent machine.
pub const CONSENT_RULES: &[Rule<ConsentPhase>] = &[
    rule(C::NoConsent, E::ConsentStarted, Always, C::Pending),
    rule(C::Pending, E::ConsentStarted, Always, C::Pending),
    rule(C::Pending, E::ConsentCompleted, Always, C::NoConsent),
    rule(C::Pending, E::ConsentFailed, Always, C::NoConsent),
    rule(C::NoConsent, E::Disconnected, Always, C::NoConsent),
    rule(C::Pending, E::Disconnected, Always, C::NoConsent),
];

/// The grant machine. A failed consent is not in it: it leaves the grant
/// as it was.
pub const GRANT_RULES: &[Rule<GrantPhase>] = &[
    rule(G::None, E::ConsentCompleted, Always, G::Connected),
    rule(G::Connected, E::ConsentCompleted, Always, G::Connected),
    rule(G::NeedsReconsent, E::ConsentCompleted, Always, G::Connected),
    rule(G::Connected, E::Refreshed, Always, G::Connected),
    rule(G::Connected, E::GrantRevoked, Always, G::NeedsReconsent),
    rule(
        G::NeedsReconsent,
        E::GrantRevoked,
        Always,
        G::NeedsReconsent,
    ),
    rule(G::None, E::Disconnected, Always, G::None),
    rule(G::Connected, E::Disconnected, Always, G::None),
    rule(G::NeedsReconsent, E::Disconnected, Always, G::None),
];

/// A direction's machine (the same for incoming and outgoing).
pub const DIRECTION_RULES: &[Rule<DirectionPhase>] = &[
    rule(D::NotTested, E::TestPassed, Always, D::Enabled),
    rule(D::Enabled, E::TestPassed, Always, D::Enabled),
    rule(D::Retrying, E::TestPassed, Always, D::Enabled),
    rule(D::Disabled, E::TestPassed, Always, D::Enabled),
    rule(D::NotTested, E::TestFailed, RetriesLeft, D::Retrying),
    rule(D::Enabled, E::TestFailed, RetriesLeft, D::Retrying),
    rule(D::Retrying, E::TestFailed, RetriesLeft, D::Retrying),
    rule(D::Disabled, E::TestFailed, RetriesLeft, D::Retrying),
    rule(D::Retrying, E::TestFailed, RetriesSpent, D::Disabled),
    rule(D::NotTested, E::TestFailed, Permanent, D::Disabled),
    rule(D::Enabled, E::TestFailed, Permanent, D::Disabled),
    rule(D::Retrying, E::TestFailed, Permanent, D::Disabled),
    rule(D::Disabled, E::TestFailed, Permanent, D::Disabled),
    rule(D::Enabled, E::SyncSucceeded, Always, D::Enabled),
    rule(D::Retrying, E::SyncSucceeded, Always, D::Enabled),
    rule(D::Enabled, E::SyncFailed, RetriesLeft, D::Retrying),
    rule(D::Retrying, E::SyncFailed, RetriesLeft, D::Retrying),
    rule(D::Retrying, E::SyncFailed, RetriesSpent, D::Disabled),
    rule(D::Enabled, E::SyncFailed, Permanent, D::Disabled),
    rule(D::Retrying, E::SyncFailed, Permanent, D::Disabled),
];

/// How transient failures of a direction are retried before it is
/// disabled. The default is Dynamics 365's: 10 retries, 5 minutes apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
pub struct FailurePolicy {
    /// Retries after the first failure before the direction is disabled.
    pub max_retries: u32,
    /// Wait between attempts, in seconds.
    pub interval_secs: u32,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            max_retries: 10,
            interval_secs: 300,
        }
    }
}

impl FailurePolicy {
    /// The wait between attempts.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.interval_secs))
    }
}

/// What [`apply`] needs besides the state and the event.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The mailbox's address, for messages.
    pub email: &'a str,
    /// Now.
    pub now: Timestamp,
    /// The retry policy of the directions.
    pub policy: FailurePolicy,
}

/// Which machine a change happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Machine {
    /// The consent machine.
    Consent,
    /// The grant machine.
    Grant,
    /// A direction.
    Direction(Direction),
}

/// One machine's step caused by an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Which machine.
    pub machine: Machine,
    /// Its phase before.
    pub from: &'static str,
    /// Its phase after.
    pub to: &'static str,
    /// The event.
    pub event: LifecycleEvent,
}

/// The outcome of [`apply`]: the next state and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state after the events (same version as before; the store sets
    /// the new one when it writes).
    pub state: MailboxState,
    /// Every machine step, in order.
    pub changes: Vec<Change>,
}

impl Transition {
    /// Whether the state differs from `before`.
    pub fn changed(&self, before: &MailboxState) -> bool {
        &self.state != before
    }
}

fn grant_phase(g: &GrantStatus) -> GrantPhase {
    match g {
        GrantStatus::NotConnected {} => G::None,
        GrantStatus::Connected { .. } => G::Connected,
        GrantStatus::NeedsReconsent { .. } => G::NeedsReconsent,
    }
}

fn direction_phase(d: &DirectionStatus) -> DirectionPhase {
    match d {
        DirectionStatus::NotTested {} => D::NotTested,
        DirectionStatus::Enabled { .. } => D::Enabled,
        DirectionStatus::Retrying { .. } => D::Retrying,
        DirectionStatus::Disabled { .. } => D::Disabled,
    }
}

/// Names of phases, as the diagram shows them.
pub trait PhaseName: Copy + PartialEq {
    /// The name.
    fn name(self) -> &'static str;
}

impl PhaseName for ConsentPhase {
    fn name(self) -> &'static str {
        match self {
            C::NoConsent => "NoConsent",
            C::Pending => "ConsentPending",
        }
    }
}

impl PhaseName for GrantPhase {
    fn name(self) -> &'static str {
        match self {
            G::None => "NoGrant",
            G::Connected => "Connected",
            G::NeedsReconsent => "NeedsReconsent",
        }
    }
}

impl PhaseName for DirectionPhase {
    fn name(self) -> &'static str {
        match self {
            D::NotTested => "NotTested",
            D::Enabled => "Enabled",
            D::Retrying => "Retrying",
            D::Disabled => "Disabled",
        }
    }
}

/// Looks up the rule for `from` and the event. `Ok(None)` when the machine
/// has no rules for this event (it is not affected); an error when it has
/// rules for it but none fits.
fn step<P: PhaseName>(
    rules: &[Rule<P>],
    from: P,
    event: EventKind,
    guard_holds: impl Fn(Guard) -> bool,
    machine: &str,
) -> Result<Option<P>> {
    if !rules.iter().any(|r| r.event == event) {
        return Ok(None);
    }
    rules
        .iter()
        .find(|r| r.from == from && r.event == event && guard_holds(r.guard))
        .map(|r| Some(r.to))
        .ok_or_else(|| {
            Error::new(
                ErrorCode::Conflict,
                format!(
                    "{} cannot happen while the {machine} is {}; the mailbox's state changed meanwhile — reload it",
                    event.as_str(),
                    from.name()
                ),
            )
        })
}

/// Applies one event. See the module docs.
pub fn apply(
    state: &MailboxState,
    event: &LifecycleEvent,
    ctx: &Context<'_>,
) -> Result<Transition> {
    let mut next = state.clone();
    let mut changes = Vec::new();
    let kind = event.kind();
    let now = ctx.now;

    // Consent.
    let consent_from = state.consent_phase(now);
    if let Some(to) = step(CONSENT_RULES, consent_from, kind, |_| true, "consent")? {
        next.pending_consent = match (to, event) {
            (C::Pending, LifecycleEvent::ConsentStarted { expires_at }) => Some(PendingConsent {
                started_at: now,
                expires_at: *expires_at,
            }),
            _ => None,
        };
        changes.push(Change {
            machine: Machine::Consent,
            from: consent_from.name(),
            to: to.name(),
            event: event.clone(),
        });
    }

    // Grant.
    let grant_from = grant_phase(&state.grant);
    if let Some(to) = step(GRANT_RULES, grant_from, kind, |_| true, "grant")? {
        next.grant = match (to, event) {
            (G::Connected, LifecycleEvent::ConsentCompleted { account }) => {
                GrantStatus::Connected {
                    account: account.clone(),
                    since: now,
                }
            }
            (G::Connected, _) => state.grant.clone(),
            (G::NeedsReconsent, LifecycleEvent::GrantRevoked { code, reason }) => {
                match &state.grant {
                    // The first refusal explains; later ones change nothing.
                    GrantStatus::NeedsReconsent { .. } => state.grant.clone(),
                    _ => GrantStatus::NeedsReconsent {
                        code: *code,
                        reason: reason.clone(),
                        since: now,
                    },
                }
            }
            _ => GrantStatus::NotConnected {},
        };
        changes.push(Change {
            machine: Machine::Grant,
            from: grant_from.name(),
            to: to.name(),
            event: event.clone(),
        });
    }

    // Directions.
    if let Some(direction) = event.direction() {
        let current = state.direction(direction);
        let from = direction_phase(&current.status);
        let failures = match &current.status {
            DirectionStatus::Retrying { failures, .. } => *failures,
            _ => 0,
        };
        let failure = event.failure();
        let transient = failure.is_some_and(|(code, _)| code.is_transient());
        let spent = failures >= ctx.policy.max_retries;
        let holds = |guard: Guard| match guard {
            Always => true,
            RetriesLeft => transient && !spent,
            RetriesSpent => transient && spent,
            Permanent => failure.is_some() && !transient,
        };
        let machine = match direction {
            Direction::Incoming => "incoming direction",
            Direction::Outgoing => "outgoing direction",
        };
        if let Some(to) = step(DIRECTION_RULES, from, kind, holds, machine)? {
            let slot = next.direction_mut(direction);
            slot.status = match (to, failure) {
                (D::Enabled, _) => match &current.status {
                    DirectionStatus::Enabled { since } => {
                        DirectionStatus::Enabled { since: *since }
                    }
                    _ => DirectionStatus::Enabled { since: now },
                },
                (D::Retrying, Some((code, reason))) => DirectionStatus::Retrying {
                    failures: failures + 1,
                    code,
                    reason: reason.to_owned(),
                    next_attempt: now.plus(ctx.policy.interval()),
                },
                (D::Disabled, Some((code, reason))) => DirectionStatus::Disabled {
                    code,
                    reason: reason.to_owned(),
                    since: now,
                },
                (_, _) => current.status.clone(),
            };
            match event {
                LifecycleEvent::TestPassed { .. } => {
                    slot.last_test = TestStatus::Success { at: now };
                }
                LifecycleEvent::TestFailed { code, reason, .. } => {
                    slot.last_test = TestStatus::Failure {
                        at: now,
                        code: *code,
                        reason: reason.clone(),
                    };
                }
                _ => {}
            }
            changes.push(Change {
                machine: Machine::Direction(direction),
                from: from.name(),
                to: to.name(),
                event: event.clone(),
            });
        }
    }
    Ok(Transition {
        state: next,
        changes,
    })
}

/// Applies events in order; all or nothing.
pub fn apply_all(
    state: &MailboxState,
    events: &[LifecycleEvent],
    ctx: &Context<'_>,
) -> Result<Transition> {
    let mut current = state.clone();
    let mut changes = Vec::new();
    for event in events {
        let t = apply(&current, event, ctx)?;
        current = t.state;
        changes.extend(t.changes);
    }
    Ok(Transition {
        state: current,
        changes,
    })
}

/// An alert to add to the mailbox's wall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    /// Level.
    pub level: AlertLevel,
    /// Stable code (an error code, or an event such as `mailbox_enabled`).
    pub code: String,
    /// Text for people.
    pub message: String,
}

/// What a [`crate::MailboxEvent`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[cfg_attr(feature = "napi", napi_derive::napi(string_enum = "snake_case"))]
pub enum MailboxEventKind {
    /// The mailbox's current state: the first event of a subscription (and
    /// again after a subscriber fell behind). Never caused by a change.
    Snapshot,
    /// Consent completed; the grant is stored.
    Connected,
    /// A consent ended without a grant (declined, wrong account, ...).
    ConsentFailed,
    /// The access token was refreshed.
    Refreshed,
    /// The grant stopped working; the owner must consent again.
    NeedsReconsent,
    /// The mailbox was disconnected.
    Disconnected,
    /// A direction is enabled (it passed a test, or synced again).
    DirectionEnabled,
    /// A direction failed transiently and will be retried.
    DirectionRetrying,
    /// A direction was disabled.
    DirectionDisabled,
}

impl MailboxEventKind {
    /// Every kind.
    pub const ALL: [MailboxEventKind; 9] = [
        MailboxEventKind::Snapshot,
        MailboxEventKind::Connected,
        MailboxEventKind::ConsentFailed,
        MailboxEventKind::Refreshed,
        MailboxEventKind::NeedsReconsent,
        MailboxEventKind::Disconnected,
        MailboxEventKind::DirectionEnabled,
        MailboxEventKind::DirectionRetrying,
        MailboxEventKind::DirectionDisabled,
    ];

    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            MailboxEventKind::Snapshot => "snapshot",
            MailboxEventKind::Connected => "connected",
            MailboxEventKind::ConsentFailed => "consent_failed",
            MailboxEventKind::Refreshed => "refreshed",
            MailboxEventKind::NeedsReconsent => "needs_reconsent",
            MailboxEventKind::Disconnected => "disconnected",
            MailboxEventKind::DirectionEnabled => "direction_enabled",
            MailboxEventKind::DirectionRetrying => "direction_retrying",
            MailboxEventKind::DirectionDisabled => "direction_disabled",
        }
    }
}

/// A notice for the host, derived from a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// What happened.
    pub kind: MailboxEventKind,
    /// The direction, for direction notices.
    pub direction: Option<Direction>,
    /// The code behind it, if any.
    pub code: Option<ErrorCode>,
    /// What happened and what to do, for people.
    pub message: String,
}

/// Ends a message with a full stop, so another sentence can follow it.
pub(crate) fn sentence(text: &str) -> String {
    let text = text.trim_end();
    if text.is_empty() || text.ends_with(['.', '!', '?']) {
        text.to_owned()
    } else {
        format!("{text}.")
    }
}

/// The notices for the host: one per change that matters to people, with
/// direction changes of the same kind and cause merged.
pub fn notices_for(changes: &[Change], email: &str) -> Vec<Notice> {
    let mut out: Vec<Notice> = Vec::new();
    for change in changes {
        let notice = match (change.machine, &change.event, change.to) {
            (Machine::Grant, LifecycleEvent::ConsentCompleted { .. }, _) => Some(Notice {
                kind: MailboxEventKind::Connected,
                direction: None,
                code: None,
                message: format!("{email} is connected."),
            }),
            (Machine::Consent, LifecycleEvent::ConsentFailed { code, reason }, _) => Some(Notice {
                kind: MailboxEventKind::ConsentFailed,
                direction: None,
                code: Some(*code),
                message: format!("{} {}", sentence(reason), code.next_action()),
            }),
            (Machine::Grant, LifecycleEvent::Refreshed, _) => Some(Notice {
                kind: MailboxEventKind::Refreshed,
                direction: None,
                code: None,
                message: format!("The access token of {email} was refreshed."),
            }),
            (Machine::Grant, LifecycleEvent::GrantRevoked { code, reason }, _)
                if change.from != "NeedsReconsent" =>
            {
                Some(Notice {
                    kind: MailboxEventKind::NeedsReconsent,
                    direction: None,
                    code: Some(*code),
                    message: format!("{} {}", sentence(reason), code.next_action()),
                })
            }
            (Machine::Grant, LifecycleEvent::Disconnected, _) => Some(Notice {
                kind: MailboxEventKind::Disconnected,
                direction: None,
                code: None,
                message: format!("{email} was disconnected."),
            }),
            (Machine::Direction(d), _, "Enabled") if change.from != "Enabled" => Some(Notice {
                kind: MailboxEventKind::DirectionEnabled,
                direction: Some(d),
                code: None,
                message: format!("{} sync for {email} is enabled.", d.as_str()),
            }),
            (Machine::Direction(d), event, "Retrying") => {
                event.failure().map(|(code, reason)| Notice {
                    kind: MailboxEventKind::DirectionRetrying,
                    direction: Some(d),
                    code: Some(code),
                    message: format!(
                        "{} sync for {email} failed and will be retried: {}",
                        d.as_str(),
                        sentence(reason)
                    ),
                })
            }
            (Machine::Direction(d), event, "Disabled") => event.failure().map(|(code, reason)| {
                let spent = if change.from == "Retrying" && code.is_transient() {
                    " after its retries were spent"
                } else {
                    ""
                };
                Notice {
                    kind: MailboxEventKind::DirectionDisabled,
                    direction: Some(d),
                    code: Some(code),
                    message: format!(
                        "{} sync for {email} is disabled{spent}: {} {}",
                        d.as_str(),
                        sentence(reason),
                        code.next_action()
                    ),
                }
            }),
            _ => None,
        };
        if let Some(n) = notice {
            out.push(n);
        }
    }
    merge_directions(out, email)
}

/// Merges an incoming and an outgoing notice of the same kind and code
/// into one that names both directions.
fn merge_directions(notices: Vec<Notice>, email: &str) -> Vec<Notice> {
    let mut out: Vec<Notice> = Vec::new();
    for n in notices {
        let twin = out.iter_mut().find(|o| {
            o.kind == n.kind
                && o.code == n.code
                && o.direction.is_some()
                && n.direction.is_some()
                && o.direction != n.direction
        });
        match twin {
            Some(o) => {
                let one = o.direction.map(Direction::as_str).unwrap_or_default();
                let other = n.direction.map(Direction::as_str).unwrap_or_default();
                let prefix = format!("{one} sync for {email}");
                o.message =
                    o.message
                        .replacen(&prefix, &format!("{one} and {other} sync for {email}"), 1);
                o.direction = None;
            }
            None => out.push(n),
        }
    }
    out
}

/// The alerts a set of changes writes on the mailbox's wall: the notices,
/// with the level that fits each.
pub fn alerts_for(changes: &[Change], email: &str) -> Vec<NewAlert> {
    notices_for(changes, email)
        .into_iter()
        .filter(|n| {
            !matches!(
                n.kind,
                MailboxEventKind::Refreshed | MailboxEventKind::Snapshot
            )
        })
        .map(|n| {
            let level = match n.kind {
                MailboxEventKind::Connected
                | MailboxEventKind::Disconnected
                | MailboxEventKind::DirectionEnabled => AlertLevel::Info,
                MailboxEventKind::ConsentFailed | MailboxEventKind::DirectionRetrying => {
                    AlertLevel::Warning
                }
                MailboxEventKind::NeedsReconsent | MailboxEventKind::DirectionDisabled => {
                    AlertLevel::Error
                }
                MailboxEventKind::Refreshed | MailboxEventKind::Snapshot => AlertLevel::Info,
            };
            let code = match n.code {
                Some(c) => c.as_str().to_owned(),
                None => match n.kind {
                    MailboxEventKind::DirectionEnabled => "mailbox_enabled".to_owned(),
                    other => other.as_str().to_owned(),
                },
            };
            NewAlert {
                level,
                code,
                message: n.message,
            }
        })
        .collect()
}

fn mermaid<P: PhaseName>(out: &mut String, title: &str, initial: P, rules: &[Rule<P>]) {
    out.push_str(&format!("%% {title}\nstateDiagram-v2\n"));
    out.push_str(&format!("    [*] --> {}\n", initial.name()));
    for r in rules {
        let label = match r.guard.label() {
            Some(g) => format!("{} [{g}]", r.event.as_str()),
            None => r.event.as_str().to_owned(),
        };
        out.push_str(&format!(
            "    {} --> {}: {label}\n",
            r.from.name(),
            r.to.name()
        ));
    }
}

/// The three machines as mermaid state diagrams, drawn from the rule tables
/// (docs/lifecycle.md holds this text; a test keeps them equal).
pub fn diagram() -> Vec<(&'static str, String)> {
    let mut consent = String::new();
    mermaid(&mut consent, "consent", C::NoConsent, CONSENT_RULES);
    let mut grant = String::new();
    mermaid(&mut grant, "grant", G::None, GRANT_RULES);
    let mut direction = String::new();
    mermaid(
        &mut direction,
        "direction (incoming and outgoing alike)",
        D::NotTested,
        DIRECTION_RULES,
    );
    vec![
        ("consent", consent),
        ("grant", grant),
        ("direction", direction),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(now: Timestamp) -> Context<'static> {
        Context {
            email: "a@example.com",
            now,
            policy: FailurePolicy {
                max_retries: 2,
                interval_secs: 60,
            },
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000)
    }

    fn fail(direction: Direction, code: ErrorCode) -> LifecycleEvent {
        LifecycleEvent::SyncFailed {
            direction,
            code,
            reason: format!("{code} happened"),
        }
    }

    fn test_failed(direction: Direction, code: ErrorCode) -> LifecycleEvent {
        LifecycleEvent::TestFailed {
            direction,
            code,
            reason: format!("{code} happened"),
        }
    }

    /// A state in each phase of each machine, for exhaustive checks.
    fn consent_state(p: ConsentPhase) -> MailboxState {
        let mut s = MailboxState::new(MailboxId::new());
        if p == C::Pending {
            s.pending_consent = Some(PendingConsent {
                started_at: now(),
                expires_at: now().plus(Duration::from_secs(600)),
            });
        }
        s
    }

    fn grant_state(p: GrantPhase) -> MailboxState {
        let mut s = MailboxState::new(MailboxId::new());
        s.pending_consent = Some(PendingConsent {
            started_at: now(),
            expires_at: now().plus(Duration::from_secs(600)),
        });
        s.grant = match p {
            G::None => GrantStatus::NotConnected {},
            G::Connected => GrantStatus::Connected {
                account: "a@example.com".into(),
                since: now(),
            },
            G::NeedsReconsent => GrantStatus::NeedsReconsent {
                code: ErrorCode::TokenRevoked,
                reason: "gone".into(),
                since: now(),
            },
        };
        s
    }

    fn direction_state(p: DirectionPhase, failures: u32) -> MailboxState {
        let mut s = MailboxState::new(MailboxId::new());
        s.incoming.status = match p {
            D::NotTested => DirectionStatus::NotTested {},
            D::Enabled => DirectionStatus::Enabled { since: now() },
            D::Retrying => DirectionStatus::Retrying {
                failures,
                code: ErrorCode::Network,
                reason: "x".into(),
                next_attempt: now(),
            },
            D::Disabled => DirectionStatus::Disabled {
                code: ErrorCode::AuthRejected,
                reason: "x".into(),
                since: now(),
            },
        };
        s
    }

    fn sample(kind: EventKind, guard: Guard) -> LifecycleEvent {
        let code = match guard {
            Permanent => ErrorCode::AuthRejected,
            _ => ErrorCode::Network,
        };
        match kind {
            E::ConsentStarted => LifecycleEvent::ConsentStarted {
                expires_at: now().plus(Duration::from_secs(600)),
            },
            E::ConsentCompleted => LifecycleEvent::ConsentCompleted {
                account: "a@example.com".into(),
            },
            E::ConsentFailed => LifecycleEvent::ConsentFailed {
                code: ErrorCode::ConsentDenied,
                reason: "declined".into(),
            },
            E::Refreshed => LifecycleEvent::Refreshed,
            E::GrantRevoked => LifecycleEvent::GrantRevoked {
                code: ErrorCode::TokenRevoked,
                reason: "revoked".into(),
            },
            E::Disconnected => LifecycleEvent::Disconnected,
            E::TestPassed => LifecycleEvent::TestPassed {
                direction: Direction::Incoming,
            },
            E::TestFailed => test_failed(Direction::Incoming, code),
            E::SyncSucceeded => LifecycleEvent::SyncSucceeded {
                direction: Direction::Incoming,
            },
            E::SyncFailed => fail(Direction::Incoming, code),
        }
    }

    fn failures_for(guard: Guard) -> u32 {
        match guard {
            RetriesSpent => 2,
            _ => 1,
        }
    }

    /// Every rule of every table does what it says.
    #[test]
    fn every_legal_transition() {
        for r in CONSENT_RULES {
            let t = apply(
                &consent_state(r.from),
                &sample(r.event, r.guard),
                &ctx(now()),
            )
            .unwrap();
            assert_eq!(t.state.consent_phase(now()), r.to, "{r:?}");
        }
        for r in GRANT_RULES {
            let t = apply(&grant_state(r.from), &sample(r.event, r.guard), &ctx(now())).unwrap();
            assert_eq!(grant_phase(&t.state.grant), r.to, "{r:?}");
        }
        for r in DIRECTION_RULES {
            let before = direction_state(r.from, failures_for(r.guard));
            let t = apply(&before, &sample(r.event, r.guard), &ctx(now())).unwrap();
            assert_eq!(direction_phase(&t.state.incoming.status), r.to, "{r:?}");
            assert_eq!(
                t.state.outgoing, before.outgoing,
                "the other direction is untouched"
            );
        }
    }

    /// Every (phase, event) pair where a table has rules for the event but
    /// none from the phase is refused with `conflict`.
    #[test]
    fn every_illegal_transition_is_refused() {
        let mut refused = 0;
        for kind in EventKind::ALL {
            for p in [C::NoConsent, C::Pending] {
                let covered = CONSENT_RULES.iter().any(|r| r.event == kind);
                let legal = CONSENT_RULES.iter().any(|r| r.event == kind && r.from == p);
                if covered && !legal {
                    let e =
                        apply(&consent_state(p), &sample(kind, Always), &ctx(now())).unwrap_err();
                    assert_eq!(e.code(), ErrorCode::Conflict, "{p:?} {kind:?}");
                    refused += 1;
                }
            }
            for p in [G::None, G::Connected, G::NeedsReconsent] {
                let covered = GRANT_RULES.iter().any(|r| r.event == kind);
                let legal = GRANT_RULES.iter().any(|r| r.event == kind && r.from == p);
                if covered && !legal {
                    let e = apply(&grant_state(p), &sample(kind, Always), &ctx(now())).unwrap_err();
                    assert_eq!(e.code(), ErrorCode::Conflict, "{p:?} {kind:?}");
                    refused += 1;
                }
            }
            for p in [D::NotTested, D::Enabled, D::Retrying, D::Disabled] {
                let covered = DIRECTION_RULES.iter().any(|r| r.event == kind);
                let legal = DIRECTION_RULES
                    .iter()
                    .any(|r| r.event == kind && r.from == p);
                if covered && !legal {
                    for guard in [RetriesLeft, Permanent] {
                        let before = direction_state(p, 1);
                        let e = apply(&before, &sample(kind, guard), &ctx(now())).unwrap_err();
                        assert_eq!(e.code(), ErrorCode::Conflict, "{p:?} {kind:?}");
                        refused += 1;
                    }
                }
            }
        }
        // Consent: completed/failed without one pending (2); grant: refreshed
        // and revoked without a grant, refreshed while it needs re-consent
        // (3); direction: sync events on NotTested and Disabled (4 × 2).
        assert_eq!(refused, 13);
    }

    /// Of the rules with guards, exactly one fits any failure and state.
    #[test]
    fn guards_pick_exactly_one_rule() {
        for p in [D::NotTested, D::Enabled, D::Retrying, D::Disabled] {
            for kind in [E::TestFailed, E::SyncFailed] {
                for failures in [0, 1, 2] {
                    for code in [ErrorCode::Network, ErrorCode::AuthRejected] {
                        let transient = code.is_transient();
                        let spent = failures >= 2;
                        let fits = DIRECTION_RULES
                            .iter()
                            .filter(|r| r.from == p && r.event == kind)
                            .filter(|r| match r.guard {
                                Always => true,
                                RetriesLeft => transient && !spent,
                                RetriesSpent => transient && spent,
                                Permanent => !transient,
                            })
                            .count();
                        assert!(fits <= 1, "{p:?} {kind:?} {failures} {code}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_failed_consent_leaves_an_existing_grant_untouched() {
        let connected = grant_state(G::Connected);
        let t = apply(
            &connected,
            &LifecycleEvent::ConsentFailed {
                code: ErrorCode::ConsentDenied,
                reason: "declined".into(),
            },
            &ctx(now()),
        )
        .unwrap();
        assert_eq!(t.state.grant, connected.grant);
        assert_eq!(t.state.pending_consent, None);
    }

    #[test]
    fn transient_failures_retry_then_disable_after_the_policy() {
        let mut s = direction_state(D::Enabled, 0);
        let c = ctx(now());
        for expected in 1..=2 {
            s = apply(&s, &fail(Direction::Incoming, ErrorCode::Network), &c)
                .unwrap()
                .state;
            match &s.incoming.status {
                DirectionStatus::Retrying {
                    failures,
                    next_attempt,
                    ..
                } => {
                    assert_eq!(*failures, expected);
                    assert_eq!(*next_attempt, now().plus(Duration::from_secs(60)));
                }
                other => panic!("{other:?}"),
            }
        }
        let t = apply(&s, &fail(Direction::Incoming, ErrorCode::Network), &c).unwrap();
        assert!(matches!(
            t.state.incoming.status,
            DirectionStatus::Disabled {
                code: ErrorCode::Network,
                ..
            }
        ));
        let notices = notices_for(&t.changes, "a@example.com");
        assert_eq!(notices[0].kind, MailboxEventKind::DirectionDisabled);
        assert!(
            notices[0].message.contains("retries were spent"),
            "{notices:?}"
        );
        // A success in between resets the count.
        let mut s = direction_state(D::Enabled, 0);
        s = apply(&s, &fail(Direction::Incoming, ErrorCode::Network), &c)
            .unwrap()
            .state;
        s = apply(
            &s,
            &LifecycleEvent::SyncSucceeded {
                direction: Direction::Incoming,
            },
            &c,
        )
        .unwrap()
        .state;
        assert!(matches!(s.incoming.status, DirectionStatus::Enabled { .. }));
        // A permanent failure disables at once.
        let t = apply(&s, &fail(Direction::Incoming, ErrorCode::AuthRejected), &c).unwrap();
        assert!(matches!(
            t.state.incoming.status,
            DirectionStatus::Disabled { .. }
        ));
    }

    #[test]
    fn one_alert_per_cause_naming_both_directions() {
        let s = MailboxState::new(MailboxId::new());
        let t = apply_all(
            &s,
            &[
                test_failed(Direction::Incoming, ErrorCode::TokenRevoked),
                test_failed(Direction::Outgoing, ErrorCode::TokenRevoked),
            ],
            &ctx(now()),
        )
        .unwrap();
        let alerts = alerts_for(&t.changes, "a@example.com");
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].level, AlertLevel::Error);
        assert!(
            alerts[0]
                .message
                .starts_with("incoming and outgoing sync for a@example.com is disabled"),
            "{}",
            alerts[0].message
        );
        assert!(
            alerts[0]
                .message
                .ends_with("token_revoked happened. Ask the mailbox owner to connect to Gmail again (re-consent)."),
            "sentences are separated: {}",
            alerts[0].message
        );
        let t = apply_all(
            &s,
            &[
                test_failed(Direction::Incoming, ErrorCode::Network),
                test_failed(Direction::Outgoing, ErrorCode::AuthRejected),
            ],
            &ctx(now()),
        )
        .unwrap();
        let alerts: Vec<_> = alerts_for(&t.changes, "a@example.com")
            .into_iter()
            .map(|a| (a.level, a.code))
            .collect();
        assert_eq!(
            alerts,
            [
                (AlertLevel::Warning, "network".to_owned()),
                (AlertLevel::Error, "auth_rejected".to_owned())
            ]
        );
    }

    #[test]
    fn an_expired_consent_no_longer_counts_as_pending() {
        let s = consent_state(C::Pending);
        let later = now().plus(Duration::from_secs(601));
        assert_eq!(s.consent_phase(later), C::NoConsent);
        let e = apply(
            &s,
            &LifecycleEvent::ConsentCompleted {
                account: "a@example.com".into(),
            },
            &ctx(later),
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Conflict);
    }

    #[test]
    fn the_diagram_names_every_rule() {
        let all: String = diagram().into_iter().map(|(_, d)| d).collect();
        let lines = all
            .lines()
            .filter(|l| l.contains("-->") && !l.contains("[*]"));
        assert_eq!(
            lines.count(),
            CONSENT_RULES.len() + GRANT_RULES.len() + DIRECTION_RULES.len()
        );
    }
}
