//! What the library counts, through the [`metrics`] facade: nothing is
//! recorded until the host installs a recorder (the `mailsync worker`
//! command installs a Prometheus exporter with `--metrics`). Every name and
//! label is listed here and in `docs/scaling.md`.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `mailsync_sync_cycles_total` | counter | `outcome` (`ok`, `failed`) |
//! | `mailsync_sync_failures_total` | counter | `code` (an [`ErrorCode`]) |
//! | `mailsync_messages_in_total` | counter | `outcome` (`stored`, `skipped`, `filtered`, `oversized`) |
//! | `mailsync_message_bytes_in_total` | counter | |
//! | `mailsync_messages_out_total` | counter | `outcome` (`sent`, `failed`, `deferred`, `unknown`) |
//! | `mailsync_sync_cycles_running` | gauge | |
//! | `mailsync_lease_takeovers_total` | counter | `kind` (`sync`, `refresh`) |
//! | `mailsync_lease_claims_total` | counter | |
//! | `mailsync_mailboxes` | gauge | `state` (see [`state_label`]) |

use crate::error::ErrorCode;
use crate::lifecycle::{DirectionStatus, GrantStatus, MailboxState};
use crate::model::{IncomingDelivery, Mailbox};
use crate::store::LeaseKind;
use crate::sync::CycleReport;

/// Cycles ended, by outcome.
pub const SYNC_CYCLES: &str = "mailsync_sync_cycles_total";
/// Failed cycles, by error code.
pub const SYNC_FAILURES: &str = "mailsync_sync_failures_total";
/// Messages taken in, by outcome.
pub const MESSAGES_IN: &str = "mailsync_messages_in_total";
/// Message bytes downloaded.
pub const MESSAGE_BYTES_IN: &str = "mailsync_message_bytes_in_total";
/// Outgoing messages handled, by outcome.
pub const MESSAGES_OUT: &str = "mailsync_messages_out_total";
/// Cycles running in this process now.
pub const CYCLES_RUNNING: &str = "mailsync_sync_cycles_running";
/// Expired leases of another holder taken over, by kind.
pub const LEASE_TAKEOVERS: &str = "mailsync_lease_takeovers_total";
/// Sync leases claimed by this process's engines.
pub const LEASE_CLAIMS: &str = "mailsync_lease_claims_total";
/// Mailboxes by state (set by `Engine::record_mailbox_gauges`).
pub const MAILBOXES: &str = "mailsync_mailboxes";

/// Every value of the `state` label of [`MAILBOXES`].
pub const STATES: [&str; 6] = [
    "not_synced",
    "needs_reconsent",
    "not_tested",
    "enabled",
    "retrying",
    "disabled",
];

/// A mailbox's `state` label: `not_synced` when its incoming mail does not
/// use server-side sync, `needs_reconsent` when its grant needs a new
/// consent, else its incoming direction (`not_tested`, `enabled`,
/// `retrying`, `disabled`).
pub fn state_label(mailbox: &Mailbox, state: &MailboxState) -> &'static str {
    if !matches!(
        mailbox.incoming_delivery,
        IncomingDelivery::ServerSideSync | IncomingDelivery::ForwardMailbox
    ) {
        return "not_synced";
    }
    if matches!(state.grant, GrantStatus::NeedsReconsent { .. }) {
        return "needs_reconsent";
    }
    match state.incoming.status {
        DirectionStatus::NotTested {} => "not_tested",
        DirectionStatus::Enabled { .. } => "enabled",
        DirectionStatus::Retrying { .. } => "retrying",
        DirectionStatus::Disabled { .. } => "disabled",
    }
}

pub(crate) fn lease_taken_over(kind: LeaseKind) {
    metrics::counter!(LEASE_TAKEOVERS, "kind" => kind.as_str()).increment(1);
}

pub(crate) fn leases_claimed(n: usize) {
    metrics::counter!(LEASE_CLAIMS).increment(n as u64);
}

pub(crate) fn cycle_ended(report: &CycleReport) {
    match report.error_code {
        None => metrics::counter!(SYNC_CYCLES, "outcome" => "ok").increment(1),
        Some(code) => {
            metrics::counter!(SYNC_CYCLES, "outcome" => "failed").increment(1);
            failure(code);
        }
    }
    for (outcome, n) in [
        ("stored", report.delivered),
        ("skipped", report.skipped),
        ("filtered", report.filtered),
        ("oversized", report.oversized),
    ] {
        if n > 0 {
            metrics::counter!(MESSAGES_IN, "outcome" => outcome).increment(u64::from(n));
        }
    }
    if report.bytes > 0 {
        metrics::counter!(MESSAGE_BYTES_IN).increment(report.bytes as u64);
    }
    for (outcome, n) in [
        ("sent", report.sent),
        ("failed", report.send_failed),
        ("deferred", report.send_deferred),
        ("unknown", report.send_unknown),
    ] {
        if n > 0 {
            metrics::counter!(MESSAGES_OUT, "outcome" => outcome).increment(u64::from(n));
        }
    }
}

fn failure(code: ErrorCode) {
    metrics::counter!(SYNC_FAILURES, "code" => code.as_str()).increment(1);
}

/// Counts a running cycle until dropped (also when the cycle is cut short).
pub(crate) struct Running;

impl Running {
    pub(crate) fn start() -> Running {
        metrics::gauge!(CYCLES_RUNNING).increment(1.0);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        metrics::gauge!(CYCLES_RUNNING).decrement(1.0);
    }
}

pub(crate) fn mailboxes(counts: &[(&'static str, usize)]) {
    for (state, n) in counts {
        metrics::gauge!(MAILBOXES, "state" => *state).set(*n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// A cycle's report is counted in and out, by outcome.
    #[test]
    fn a_cycle_is_counted_in_and_out() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let report = CycleReport {
            delivered: 3,
            bytes: 300,
            sent: 2,
            send_failed: 1,
            ..CycleReport::new(
                &crate::model::Mailbox::from_spec(
                    crate::model::MailboxSpec::user("a@example.test"),
                    None,
                    crate::model::Timestamp::now_utc(),
                )
                .unwrap(),
            )
        };
        metrics::with_local_recorder(&recorder, || cycle_ended(&report));
        let counted: std::collections::HashMap<String, u64> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Counter(n) => {
                    let key = key.key();
                    let labels: Vec<String> = key
                        .labels()
                        .map(|l| format!("{}={}", l.key(), l.value()))
                        .collect();
                    Some((format!("{}{{{}}}", key.name(), labels.join(",")), n))
                }
                _ => None,
            })
            .collect();
        assert_eq!(counted["mailsync_sync_cycles_total{outcome=ok}"], 1);
        assert_eq!(counted["mailsync_messages_in_total{outcome=stored}"], 3);
        assert_eq!(counted["mailsync_message_bytes_in_total{}"], 300);
        assert_eq!(counted["mailsync_messages_out_total{outcome=sent}"], 2);
        assert_eq!(counted["mailsync_messages_out_total{outcome=failed}"], 1);
        assert!(!counted.contains_key("mailsync_messages_out_total{outcome=deferred}"));
    }
}
