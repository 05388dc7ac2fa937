//! One POP3 incoming cycle of one mailbox.
//!
//! The cursor is the set of UIDLs already recorded. `UIDL` lists what the
//! server holds; the new ones are downloaded with `RETR` in server order,
//! delivered in batches, and recorded with their UIDL after the sink's ack.
//! `DELE` is sent only for a forward mailbox configured to delete after
//! processing, and only for messages the sink acknowledged; `QUIT` then
//! makes the deletions happen.

use std::sync::Arc;

use crate::checks::MailboxCredentials;
use crate::error::{Error, ErrorCode, Result};
use crate::lease::Lease;
use crate::model::{IncomingFilter, Mailbox, ServerProfile};
use crate::net::pop3::Pop3Client;
use crate::net::{CredentialSource, Steps};

use super::message::{ServerFacts, header_facts, header_section, incoming_message, message_key};
use super::{
    CycleReport, DeliveryOutcome, Engine, IncomingMessage, MessageRecord, RecordedOutcome,
    SyncCursor, SyncProgress,
};

pub(super) async fn run(
    engine: &Engine,
    mailbox: &Mailbox,
    profile: &ServerProfile,
    mut lease: Lease,
    report: &mut CycleReport,
) -> Result<()> {
    let sync = &engine.inner.sync;
    let creds = Arc::new(MailboxCredentials::new(
        sync.clone(),
        mailbox.clone(),
        profile.clone(),
    ));
    let connect = sync.connect_options(profile)?;
    let endpoint = &profile.incoming.endpoint;
    let mut steps = Steps::new("POP3", connect.timeout);
    let first = creds.credentials(false).await?;
    let mut pop = match Pop3Client::connect(endpoint, &connect, &first, None, &mut steps).await {
        Ok(c) => c,
        Err(e) if e.error.code() == ErrorCode::AuthRejected => {
            let fresh = creds.credentials(true).await?;
            let mut steps = Steps::new("POP3", connect.timeout);
            Pop3Client::connect(endpoint, &connect, &fresh, None, &mut steps)
                .await
                .map_err(|e| e.error)?
        }
        Err(e) => return Err(e.error),
    };
    pop.set_max_message_size(u64::from(engine.inner.options.max_message_bytes));
    pop.set_min_throughput(engine.inner.options.min_throughput_bytes_per_sec);
    let result = cycle(engine, mailbox, profile, &mut lease, &mut pop, report).await;
    // QUIT commits the deletions. DELE was sent only for messages the sink
    // acknowledged and the store recorded, so QUIT also after a later batch
    // failed (e.g. the sink): their UIDLs are recorded, and no later cycle
    // would delete them. A broken session refuses QUIT: nothing is deleted.
    match &result {
        Ok(()) => pop.quit().await?,
        Err(_) => {
            let _ = pop.quit().await;
        }
    }
    let _ = lease.release().await;
    result
}

async fn cycle(
    engine: &Engine,
    mailbox: &Mailbox,
    profile: &ServerProfile,
    lease: &mut Lease,
    pop: &mut Pop3Client,
    report: &mut CycleReport,
) -> Result<()> {
    let sync = &engine.inner.sync;
    let options = &engine.inner.options;
    let store = sync.store();
    let postpone = engine.postpone_for(profile);
    let since = super::imap_in::process_from(mailbox, profile);
    let mut cursor = store
        .get_cursor(&mailbox.id)
        .await?
        .unwrap_or_else(|| SyncCursor::new(mailbox.id.clone()));
    let seen = store.recorded_uidls(&mailbox.id).await?;
    let sizes: std::collections::HashMap<u32, u64> = pop.list().await?.into_iter().collect();
    let new: Vec<(u32, String)> = pop
        .uidl()
        .await?
        .into_iter()
        .filter(|(_, uidl)| !seen.contains(uidl))
        .collect();
    // A cycle takes at most `messages_per_cycle` messages; mail before
    // "process email from" does not count.
    let limit = options.messages_per_cycle as usize;
    let mut taken = 0usize;
    let delete = mailbox.is_forward() && mailbox.delete_after_processing;
    let total_bytes: i64 = new
        .iter()
        .map(|(n, _)| i64::try_from(sizes.get(n).copied().unwrap_or(0)).unwrap_or(0))
        .sum();
    let mut progress = SyncProgress {
        mailbox_id: mailbox.id.clone(),
        email: mailbox.email.clone(),
        messages_done: 0,
        messages_total: u32::try_from(new.len()).unwrap_or(u32::MAX),
        bytes_done: 0,
        bytes_total: total_bytes,
        finished: false,
    };
    engine.report_progress(progress.clone());
    let mut records: Vec<MessageRecord> = Vec::new();
    let mut oversized: Vec<String> = Vec::new();
    let mut batch: Vec<(u32, IncomingMessage)> = Vec::new();
    let mut batch_bytes: u64 = 0;
    let mut blocked = false;
    let mut i = 0;
    while i < new.len() && !blocked {
        let (n, uidl) = new[i].clone();
        i += 1;
        let size = sizes.get(&n).copied().unwrap_or(0);
        if taken == limit {
            // The cycle's share is taken: deliver what the batch holds, stop.
            report.more = true;
            i = new.len();
        } else if size > u64::from(options.max_message_bytes) {
            taken += 1;
            oversized.push(uidl.clone());
            report.oversized += 1;
            records.push(MessageRecord {
                key: format!("uidl:{uidl}"),
                uid: None,
                uidl: Some(uidl),
                outcome: RecordedOutcome::Oversized,
            });
        } else {
            // Decide from the headers first (TOP) when a date or a filter
            // applies, so left-out mail is never downloaded.
            let decide = since.is_some() || !matches!(mailbox.incoming_filter, IncomingFilter::All);
            let head = if decide {
                Some(pop.top_headers(n).await?)
            } else {
                None
            };
            let too_old = match (since, head.as_deref()) {
                (Some(since), Some(h)) => {
                    sent_at(h).is_some_and(|t| t.unix_millis() < since.unix_millis())
                }
                _ => false,
            };
            let keep = !too_old
                && match (mailbox.incoming_filter, head.as_deref()) {
                    (IncomingFilter::All, _) => true,
                    (IncomingFilter::None, _) => false,
                    (filter, Some(h)) => passes(engine, mailbox, filter, header_section(h)).await?,
                    (_, None) => true,
                };
            if !too_old {
                taken += 1;
            }
            if too_old {
                // Not ours ("process email from"); recorded so it is not
                // looked at again.
                records.push(MessageRecord {
                    key: message_key(None, header_section(head.as_deref().unwrap_or(&[]))),
                    uid: None,
                    uidl: Some(uidl),
                    outcome: RecordedOutcome::Filtered,
                });
            } else if keep {
                let raw = pop.retr(n).await?;
                batch_bytes += raw.len() as u64;
                let message = incoming_message(
                    &mailbox.id,
                    raw,
                    ServerFacts {
                        uidl: Some(uidl),
                        ..ServerFacts::default()
                    },
                );
                batch.push((n, message));
            } else {
                report.filtered += 1;
                records.push(MessageRecord {
                    key: message_key(None, header_section(head.as_deref().unwrap_or(&[]))),
                    uid: None,
                    uidl: Some(uidl),
                    outcome: RecordedOutcome::Filtered,
                });
            }
        }
        let full = batch.len() >= options.batch_messages as usize
            || batch_bytes >= u64::from(options.batch_bytes);
        if full || i == new.len() {
            lease.renew().await?;
            let numbers: Vec<u32> = batch.iter().map(|(n, _)| *n).collect();
            let messages: Vec<IncomingMessage> = batch.drain(..).map(|(_, m)| m).collect();
            let ids: Vec<(String, Option<String>)> = messages
                .iter()
                .map(|m| (m.key.clone(), m.uidl.clone()))
                .collect();
            let bytes: i64 = messages.iter().map(|m| m.raw.len() as i64).sum();
            batch_bytes = 0;
            let outcomes = if messages.is_empty() {
                Vec::new()
            } else {
                engine.deliver(messages).await?
            };
            report.bytes += bytes;
            progress.bytes_done += bytes;
            let mut acknowledged: Vec<u32> = Vec::new();
            for (((key, uidl), outcome), n) in ids.into_iter().zip(outcomes).zip(numbers) {
                progress.messages_done += 1;
                let outcome = match outcome {
                    DeliveryOutcome::Stored => {
                        report.delivered += 1;
                        RecordedOutcome::Stored
                    }
                    DeliveryOutcome::Skip => {
                        report.skipped += 1;
                        RecordedOutcome::Skipped
                    }
                    DeliveryOutcome::RetryLater => {
                        report.retry_later += 1;
                        blocked = true;
                        continue;
                    }
                };
                acknowledged.push(n);
                records.push(MessageRecord {
                    key,
                    uid: None,
                    uidl,
                    outcome,
                });
            }
            // Mid-cycle the mailbox stays due: should this worker die now,
            // the next one to claim it continues at once.
            let due_after = if blocked {
                postpone
            } else {
                std::time::Duration::ZERO
            };
            commit(engine, &mut cursor, &mut records, lease, due_after, report).await?;
            if delete {
                for n in acknowledged {
                    pop.dele(n).await?;
                }
            }
            engine.report_progress(progress.clone());
        }
    }
    if !oversized.is_empty() {
        engine
            .alert(
                mailbox,
                ErrorCode::MessageTooLarge,
                format!(
                    "{} POP3 message(s) of {} are larger than {} bytes and were skipped without downloading",
                    oversized.len(),
                    mailbox.email,
                    options.max_message_bytes
                ),
            )
            .await;
    }
    // Records of filtered or oversized mail, and the schedule.
    commit(engine, &mut cursor, &mut records, lease, postpone, report).await
}

/// When a message was sent, from its `Date` header (POP3 has no
/// INTERNALDATE).
fn sent_at(header: &[u8]) -> Option<crate::model::Timestamp> {
    mail_parser::MessageParser::default()
        .parse_headers(header)
        .and_then(|m| m.date().map(|d| d.to_timestamp()))
        .map(|secs| crate::model::Timestamp::from_unix_millis(secs.saturating_mul(1000)))
}

/// Whether the incoming filter keeps a message, from its headers.
async fn passes(
    engine: &Engine,
    mailbox: &Mailbox,
    filter: IncomingFilter,
    header: &[u8],
) -> Result<bool> {
    let facts = header_facts(header);
    let sink = &engine.inner.sink;
    let failed = |e: Error| {
        Error::new(
            ErrorCode::SinkFailed,
            format!(
                "the sink's incoming filter failed: {} [{}]",
                e.message(),
                e.code()
            ),
        )
    };
    Ok(match filter {
        IncomingFilter::RepliesToTrackedEmail => {
            let ids: Vec<String> = facts
                .in_reply_to
                .iter()
                .chain(&facts.references)
                .cloned()
                .collect();
            if ids.is_empty() {
                false
            } else {
                let n = ids.len();
                let answers = sink.tracked(&mailbox.id, ids).await.map_err(failed)?;
                super::imap_in::answer_count("tracked", answers.len(), n)?;
                answers.into_iter().any(|t| t)
            }
        }
        IncomingFilter::FromKnownRecords => {
            if facts.from.is_empty() {
                false
            } else {
                let n = facts.from.len();
                let answers = sink
                    .known_senders(&mailbox.id, facts.from)
                    .await
                    .map_err(failed)?;
                super::imap_in::answer_count("known_senders", answers.len(), n)?;
                answers.into_iter().any(|k| k)
            }
        }
        IncomingFilter::All => true,
        IncomingFilter::None => false,
    })
}

async fn commit(
    engine: &Engine,
    cursor: &mut SyncCursor,
    records: &mut Vec<MessageRecord>,
    lease: &Lease,
    postpone: std::time::Duration,
    report: &CycleReport,
) -> Result<()> {
    let sync = &engine.inner.sync;
    let now = sync.now();
    let mut next = cursor.clone();
    let stored = records
        .iter()
        .filter(|r| r.outcome == RecordedOutcome::Stored)
        .count() as i64;
    next.delivered += stored;
    next.skipped += records.len() as i64 - stored;
    next.last_cycle_at = Some(now);
    next.next_due = Some(if report.more { now } else { now.plus(postpone) });
    match sync
        .store()
        .commit_sync(&next, cursor.version, records, lease.record())
        .await?
    {
        Some(version) => {
            next.version = version;
            *cursor = next;
            records.clear();
            Ok(())
        }
        None => Err(Error::new(
            ErrorCode::Conflict,
            "the mailbox's sync lease or cursor was taken over by another worker; this cycle stops",
        )),
    }
}
