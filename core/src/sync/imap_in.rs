//! One IMAP incoming cycle of one mailbox (INBOX only, as Dynamics syncs
//! IMAP profiles).
//!
//! 1. EXAMINE INBOX (read-only: nothing is ever marked read, moved or
//!    deleted). Same UIDVALIDITY as the cursor and no new UID: done.
//! 2. The candidates: `UID SEARCH UID <last+1>:*`, or on the first cycle
//!    `UID SEARCH SINCE <process-from>` (`ALL` without a date). When
//!    UIDVALIDITY changed, every UID is new to us: the candidates are
//!    re-mapped by message key and those already recorded are not
//!    delivered again.
//! 3. One cheap pass for sizes and dates (and Gmail ids, and for a filter
//!    the correlation headers): mail received before "process email from"
//!    is left out, oversized mail is recorded with an alert and never
//!    downloaded, the incoming filter decides before any body is fetched.
//! 4. Batches of whole messages, one `UID FETCH … BODY.PEEK[]` each; the
//!    next batch is fetched while the sink handles the current one. After
//!    each acknowledged batch, the cursor and the outcomes are written in
//!    one transaction under the sync lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::checks::MailboxCredentials;
use crate::error::{Error, ErrorCode, Result};
use crate::lease::Lease;
use crate::model::{IncomingFilter, Mailbox, ServerProfile, Timestamp};
use crate::net::imap::{FetchAttributes, ImapMailbox};

use super::message::{HeaderFacts, ServerFacts, header_facts, header_section, incoming_message};
use super::{
    CycleReport, DeliveryOutcome, Engine, ImapCursor, IncomingMessage, MessageRecord,
    RecordedOutcome, SyncCursor, SyncProgress,
};

/// The pre-pass looks at this many UIDs per command.
const META_CHUNK: usize = 1000;

/// What the cycle decided about one candidate UID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// To download and deliver.
    Fetch,
    /// Received before "process email from": not ours, nothing recorded.
    TooOld,
    /// Recorded before (UIDVALIDITY changed): not delivered again.
    AlreadyHad,
    /// Left out by the incoming filter: recorded.
    Filtered,
    /// Over the size limit: recorded, alert.
    Oversized,
}

#[derive(Debug, Clone)]
struct Candidate {
    uid: u32,
    size: u32,
    plan: Plan,
    key: Option<String>,
    /// Done: the cursor may pass it.
    done: bool,
}

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
    let timeout = connect.timeout;
    let mut imap = ImapMailbox::new(profile.incoming.endpoint.clone(), connect, creds, None);
    imap.set_max_message_size(u64::from(engine.inner.options.max_message_bytes));
    let result = cycle(
        engine, mailbox, profile, &mut lease, &mut imap, timeout, report,
    )
    .await;
    imap.close().await;
    let _ = lease.release().await;
    result
}

/// The later of the profile's and the mailbox's "process email from".
///
/// Dates on mail (INTERNALDATE, `Date:`) have whole seconds, so the cutoff is
/// taken at its whole second: mail of the cutoff's own second is processed.
pub(crate) fn process_from(mailbox: &Mailbox, profile: &ServerProfile) -> Option<Timestamp> {
    let cutoff = match (
        mailbox.process_email_received_after,
        profile.processing.process_email_received_after,
    ) {
        (Some(a), Some(b)) => Some(if a.unix_millis() >= b.unix_millis() {
            a
        } else {
            b
        }),
        (a, b) => a.or(b),
    };
    cutoff.map(|t| {
        let ms = t.unix_millis();
        Timestamp::from_unix_millis(ms - ms.rem_euclid(1000))
    })
}

/// `SINCE` takes a date; a day earlier keeps every time zone in, the exact
/// instant is checked against INTERNALDATE.
fn imap_since(t: Timestamp) -> String {
    let d = t.minus(Duration::from_secs(86_400)).to_datetime();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][usize::from(u8::from(d.month())) - 1];
    format!("SINCE {}-{month}-{}", d.day(), d.year())
}

fn uid_set(uids: &[u32]) -> String {
    crate::net::imap::uid_set(uids)
}

fn to_timestamp(t: Option<time::OffsetDateTime>) -> Option<Timestamp> {
    t.map(|d| {
        Timestamp::from_unix_millis(
            i64::try_from(d.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
        )
    })
}

#[allow(clippy::too_many_arguments)]
async fn cycle(
    engine: &Engine,
    mailbox: &Mailbox,
    profile: &ServerProfile,
    lease: &mut Lease,
    imap: &mut ImapMailbox,
    timeout: Duration,
    report: &mut CycleReport,
) -> Result<()> {
    let sync = &engine.inner.sync;
    let options = &engine.inner.options;
    let store = sync.store().clone();
    let postpone = engine.postpone_for(profile);
    let status = imap.status().await?;
    let capabilities = imap.capabilities().await?;
    let gmail = capabilities.iter().any(|c| c == "X-GM-EXT-1");
    let mut cursor = store
        .get_cursor(&mailbox.id)
        .await?
        .unwrap_or_else(|| SyncCursor::new(mailbox.id.clone()));
    let since = process_from(mailbox, profile);
    let same_validity = cursor
        .imap
        .is_some_and(|c| c.uid_validity == status.uid_validity);
    let remap = cursor.imap.is_some() && !same_validity;
    let last_uid = if same_validity {
        cursor.imap.map_or(0, |c| c.last_uid)
    } else {
        0
    };

    // 2. Candidates.
    let mut uids = if same_validity && status.uid_next != 0 && status.uid_next <= last_uid + 1 {
        Vec::new()
    } else if same_validity {
        imap.search(&format!("UID {}:*", last_uid + 1)).await?
    } else {
        match since {
            Some(t) => imap.search(&imap_since(t)).await?,
            None => imap.search("ALL").await?,
        }
    };
    uids.retain(|u| *u > last_uid);
    if remap {
        tracing::info!(
            mailbox = %mailbox.email,
            old = cursor.imap.map(|c| c.uid_validity),
            new = status.uid_validity,
            "UIDVALIDITY changed; re-mapping INBOX by message key"
        );
    }

    // 3. Sizes, dates, ids; the filter and the re-map look at headers.
    let filter = mailbox.incoming_filter;
    let need_headers = filter != IncomingFilter::All && filter != IncomingFilter::None;
    let mut items = String::from("(UID RFC822.SIZE INTERNALDATE");
    if gmail {
        items.push_str(" X-GM-MSGID");
    }
    if need_headers {
        items.push_str(" BODY.PEEK[HEADER.FIELDS (MESSAGE-ID IN-REPLY-TO REFERENCES FROM)]");
    } else if remap && !gmail {
        items.push_str(" BODY.PEEK[HEADER]");
    }
    items.push(')');
    let mut candidates: Vec<Candidate> = Vec::with_capacity(uids.len());
    let mut headers: HashMap<u32, HeaderFacts> = HashMap::new();
    // A cycle takes at most `messages_per_cycle` messages; mail before
    // "process email from" does not count (a first sync may pass a lot).
    let limit = options.messages_per_cycle as usize;
    let mut wanted = 0usize;
    'chunks: for chunk in uids.chunks(META_CHUNK) {
        let attrs = imap
            .fetch_attrs(&uid_set(chunk), &items, meta_deadline(timeout, chunk.len()))
            .await?;
        let mut by_uid: HashMap<u32, FetchAttributes> = attrs
            .into_iter()
            .filter_map(|a| a.uid.map(|u| (u, a)))
            .collect();
        for &uid in chunk {
            // Expunged meanwhile: nothing to do for it.
            let Some(a) = by_uid.remove(&uid) else {
                continue;
            };
            let size = a.size.unwrap_or(0);
            let received = to_timestamp(a.internal_date);
            let mut c = Candidate {
                uid,
                size,
                plan: Plan::Fetch,
                key: None,
                done: false,
            };
            if let (Some(since), Some(at)) = (since, received)
                && at.unix_millis() < since.unix_millis()
            {
                c.plan = Plan::TooOld;
            } else if filter == IncomingFilter::None {
                c.plan = Plan::Filtered;
            } else if size > options.max_message_bytes {
                c.plan = Plan::Oversized;
            }
            if remap || matches!(c.plan, Plan::Filtered | Plan::Oversized) || need_headers {
                let header = a.header.as_deref().unwrap_or(&[]);
                c.key = Some(super::message::message_key(
                    a.gmail_message_id,
                    header_section(header),
                ));
                if need_headers {
                    headers.insert(uid, header_facts(header));
                }
            }
            if c.plan != Plan::TooOld {
                if wanted == limit {
                    report.more = true;
                    break 'chunks;
                }
                wanted += 1;
            }
            candidates.push(c);
        }
    }
    if remap {
        let keys: Vec<String> = candidates.iter().filter_map(|c| c.key.clone()).collect();
        let known = store.recorded_keys(&mailbox.id, &keys).await?;
        for c in candidates.iter_mut() {
            if c.key.as_ref().is_some_and(|k| known.contains(k)) {
                c.plan = Plan::AlreadyHad;
                report.already_had += 1;
            }
        }
    }
    if need_headers {
        apply_filter(engine, mailbox, filter, &mut candidates, &headers).await?;
    }
    let oversized: Vec<u32> = candidates
        .iter()
        .filter(|c| c.plan == Plan::Oversized)
        .map(|c| c.uid)
        .collect();
    if !oversized.is_empty() {
        engine
            .alert(
                mailbox,
                ErrorCode::MessageTooLarge,
                format!(
                    "{} message(s) in the INBOX of {} are larger than {} bytes and were skipped without \
                     downloading (UIDs {})",
                    oversized.len(),
                    mailbox.email,
                    options.max_message_bytes,
                    uid_set(&oversized)
                ),
            )
            .await;
    }
    let mut pending_records: Vec<MessageRecord> = Vec::new();
    for c in candidates.iter_mut() {
        match c.plan {
            Plan::TooOld | Plan::AlreadyHad => c.done = true,
            Plan::Filtered => {
                c.done = true;
                report.filtered += 1;
                pending_records.push(record(c, RecordedOutcome::Filtered));
            }
            Plan::Oversized => {
                c.done = true;
                report.oversized += 1;
                pending_records.push(record(c, RecordedOutcome::Oversized));
            }
            Plan::Fetch => {}
        }
    }

    // 4. Batches, the next fetched while the sink handles the current one.
    let batches = batches(&candidates, options.batch_messages, options.batch_bytes);
    // Mail before "process email from" is not this cycle's work.
    let ours = candidates.iter().filter(|c| c.plan != Plan::TooOld);
    let total_messages = u32::try_from(ours.count()).unwrap_or(u32::MAX);
    let total_bytes: i64 = candidates
        .iter()
        .filter(|c| c.plan == Plan::Fetch)
        .map(|c| i64::from(c.size))
        .sum();
    let decided = candidates
        .iter()
        .filter(|c| !matches!(c.plan, Plan::Fetch | Plan::TooOld))
        .count();
    let mut progress = SyncProgress {
        mailbox_id: mailbox.id.clone(),
        email: mailbox.email.clone(),
        messages_done: u32::try_from(decided).unwrap_or(u32::MAX),
        messages_total: total_messages,
        bytes_done: 0,
        bytes_total: total_bytes,
        finished: false,
    };
    engine.report_progress(progress.clone());
    let body_items = if gmail {
        "(UID RFC822.SIZE INTERNALDATE FLAGS X-GM-MSGID X-GM-THRID BODY.PEEK[])"
    } else {
        "(UID RFC822.SIZE INTERNALDATE FLAGS BODY.PEEK[])"
    };
    let validity = status.uid_validity;
    let deadline_for = |batch: &[u32]| -> Duration {
        let bytes: u64 = batch
            .iter()
            .filter_map(|u| candidates.iter().find(|c| c.uid == *u))
            .map(|c| u64::from(c.size))
            .sum();
        timeout + Duration::from_secs(bytes / u64::from(options.min_throughput_bytes_per_sec))
    };
    let deadlines: Vec<Duration> = batches.iter().map(|b| deadline_for(b)).collect();
    let mut blocked = false;
    let mut next = match batches.first() {
        Some(b) => Some(fetch_batch(imap, mailbox, b, body_items, deadlines[0], validity).await?),
        None => None,
    };
    let mut index = 0;
    while let Some(messages) = next.take() {
        lease.renew().await?;
        let keys: Vec<(String, Option<u32>)> =
            messages.iter().map(|m| (m.key.clone(), m.uid)).collect();
        let bytes: i64 = messages.iter().map(|m| m.raw.len() as i64).sum();
        let following = batches.get(index + 1);
        let (outcomes, fetched) = tokio::join!(engine.deliver(messages), async {
            match following {
                Some(b) => Some(
                    fetch_batch(imap, mailbox, b, body_items, deadlines[index + 1], validity).await,
                ),
                None => None,
            }
        });
        let outcomes = outcomes?;
        report.bytes += bytes;
        progress.bytes_done += bytes;
        for ((key, uid), outcome) in keys.iter().zip(&outcomes) {
            let c = candidates
                .iter_mut()
                .find(|c| Some(c.uid) == *uid)
                .ok_or_else(|| Error::new(ErrorCode::Internal, "fetched an unplanned UID"))?;
            c.key = Some(key.clone());
            progress.messages_done += 1;
            match outcome {
                DeliveryOutcome::Stored => {
                    report.delivered += 1;
                    c.done = true;
                    pending_records.push(record(c, RecordedOutcome::Stored));
                }
                DeliveryOutcome::Skip => {
                    report.skipped += 1;
                    c.done = true;
                    pending_records.push(record(c, RecordedOutcome::Skipped));
                }
                DeliveryOutcome::RetryLater => {
                    report.retry_later += 1;
                    blocked = true;
                }
            }
        }
        // Messages the server no longer had are done too.
        for uid in &batches[index] {
            if !keys.iter().any(|(_, u)| *u == Some(*uid))
                && let Some(c) = candidates.iter_mut().find(|c| c.uid == *uid)
            {
                c.done = true;
            }
        }
        let exhausted = !blocked && index + 1 >= batches.len();
        commit(
            engine,
            &mut cursor,
            &candidates,
            &mut pending_records,
            lease,
            validity,
            exhausted.then_some(status),
            // Mid-cycle the mailbox stays due: should this worker die now,
            // the next one to claim it continues at once.
            if exhausted || blocked {
                postpone
            } else {
                Duration::ZERO
            },
            report,
        )
        .await?;
        engine.report_progress(progress.clone());
        if blocked {
            break;
        }
        next = match fetched {
            Some(r) => Some(r?),
            None => None,
        };
        index += 1;
    }
    if batches.is_empty() {
        commit(
            engine,
            &mut cursor,
            &candidates,
            &mut pending_records,
            lease,
            validity,
            Some(status),
            postpone,
            report,
        )
        .await?;
    }
    Ok(())
}

fn record(c: &Candidate, outcome: RecordedOutcome) -> MessageRecord {
    MessageRecord {
        key: c.key.clone().unwrap_or_else(|| format!("uid:{}", c.uid)),
        uid: Some(c.uid),
        uidl: None,
        outcome,
    }
}

fn meta_deadline(timeout: Duration, count: usize) -> Duration {
    // About 200 bytes per message at a very low rate, plus the timeout.
    timeout + Duration::from_millis(count as u64 * 10)
}

/// Splits the messages to fetch into batches by count and bytes.
fn batches(candidates: &[Candidate], max_messages: u32, max_bytes: u32) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut current: Vec<u32> = Vec::new();
    let mut bytes: u64 = 0;
    for c in candidates.iter().filter(|c| c.plan == Plan::Fetch) {
        let size = u64::from(c.size);
        if !current.is_empty()
            && (current.len() >= max_messages as usize || bytes + size > u64::from(max_bytes))
        {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(c.uid);
        bytes += size;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Fetches one batch of whole messages and parses them.
async fn fetch_batch(
    imap: &mut ImapMailbox,
    mailbox: &Mailbox,
    uids: &[u32],
    items: &str,
    deadline: Duration,
    validity: u32,
) -> Result<Vec<IncomingMessage>> {
    let attrs = imap.fetch_attrs(&uid_set(uids), items, deadline).await?;
    if imap.current_uid_validity() != Some(validity) {
        return Err(Error::new(
            ErrorCode::ServerUnavailable,
            "INBOX's UIDVALIDITY changed during the cycle; the next cycle re-maps it",
        ));
    }
    let mut messages: Vec<IncomingMessage> = attrs
        .into_iter()
        .filter_map(|a| {
            let uid = a.uid?;
            if !uids.contains(&uid) {
                return None;
            }
            let raw = a.body?;
            Some(incoming_message(
                &mailbox.id,
                raw,
                ServerFacts {
                    uid: Some(uid),
                    uid_validity: Some(validity),
                    uidl: None,
                    provider_id: a.gmail_message_id,
                    thread_id: a.gmail_thread_id,
                    received_at: to_timestamp(a.internal_date),
                    size: a.size,
                    flags: a.flags,
                },
            ))
        })
        .collect();
    messages.sort_by_key(|m| m.uid);
    messages.dedup_by_key(|m| m.uid);
    Ok(messages)
}

/// The sink's filter must answer each question.
pub(super) fn answer_count(method: &str, got: usize, asked: usize) -> Result<()> {
    if got == asked {
        return Ok(());
    }
    Err(Error::new(
        ErrorCode::SinkFailed,
        format!(
            "the sink's {method}() returned {got} answers for {asked} questions; it must answer each"
        ),
    ))
}

/// Asks the sink's filter questions and marks the messages it leaves out.
async fn apply_filter(
    engine: &Engine,
    mailbox: &Mailbox,
    filter: IncomingFilter,
    candidates: &mut [Candidate],
    headers: &HashMap<u32, HeaderFacts>,
) -> Result<()> {
    let asking: Vec<usize> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.plan == Plan::Fetch)
        .map(|(i, _)| i)
        .collect();
    if asking.is_empty() {
        return Ok(());
    }
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
    match filter {
        IncomingFilter::RepliesToTrackedEmail => {
            // Every id a message refers to, asked once.
            let mut ids: Vec<String> = Vec::new();
            for &i in &asking {
                if let Some(h) = headers.get(&candidates[i].uid) {
                    for id in h.in_reply_to.iter().chain(&h.references) {
                        if !ids.contains(id) {
                            ids.push(id.clone());
                        }
                    }
                }
            }
            let tracked: Vec<String> = if ids.is_empty() {
                Vec::new()
            } else {
                let answers = sink
                    .tracked(&mailbox.id, ids.clone())
                    .await
                    .map_err(failed)?;
                answer_count("tracked", answers.len(), ids.len())?;
                ids.into_iter()
                    .zip(answers)
                    .filter_map(|(id, t)| t.then_some(id))
                    .collect()
            };
            for &i in &asking {
                let keep = headers.get(&candidates[i].uid).is_some_and(|h| {
                    h.in_reply_to
                        .iter()
                        .chain(&h.references)
                        .any(|id| tracked.contains(id))
                });
                if !keep {
                    candidates[i].plan = Plan::Filtered;
                }
            }
        }
        IncomingFilter::FromKnownRecords => {
            let mut senders: Vec<String> = Vec::new();
            for &i in &asking {
                if let Some(h) = headers.get(&candidates[i].uid) {
                    for a in &h.from {
                        if !senders.contains(a) {
                            senders.push(a.clone());
                        }
                    }
                }
            }
            let known: Vec<String> = if senders.is_empty() {
                Vec::new()
            } else {
                let answers = sink
                    .known_senders(&mailbox.id, senders.clone())
                    .await
                    .map_err(failed)?;
                answer_count("known_senders", answers.len(), senders.len())?;
                senders
                    .into_iter()
                    .zip(answers)
                    .filter_map(|(a, k)| k.then_some(a))
                    .collect()
            };
            for &i in &asking {
                let keep = headers
                    .get(&candidates[i].uid)
                    .is_some_and(|h| h.from.iter().any(|a| known.contains(a)));
                if !keep {
                    candidates[i].plan = Plan::Filtered;
                }
            }
        }
        IncomingFilter::All | IncomingFilter::None => {}
    }
    Ok(())
}

/// Writes the cursor (as far as every candidate up to it is done) and the
/// pending records, under the lease. `finished`: the cycle saw everything
/// up to the INBOX's UIDNEXT, so the cursor may move there.
#[allow(clippy::too_many_arguments)]
async fn commit(
    engine: &Engine,
    cursor: &mut SyncCursor,
    candidates: &[Candidate],
    records: &mut Vec<MessageRecord>,
    lease: &Lease,
    validity: u32,
    finished: Option<crate::net::imap::MailboxStatus>,
    postpone: Duration,
    report: &CycleReport,
) -> Result<()> {
    let sync = &engine.inner.sync;
    let previous = cursor
        .imap
        .filter(|c| c.uid_validity == validity)
        .map_or(0, |c| c.last_uid);
    let mut last = previous;
    let mut all_done = true;
    for c in candidates {
        if !c.done {
            all_done = false;
            break;
        }
        last = last.max(c.uid);
    }
    let mut modseq = cursor
        .imap
        .filter(|c| c.uid_validity == validity)
        .and_then(|c| c.highest_modseq);
    if let Some(status) = finished.filter(|_| all_done && !report.more) {
        last = last.max(status.uid_next.saturating_sub(1));
        modseq = status
            .highest_modseq
            .map(|m| i64::try_from(m).unwrap_or(i64::MAX));
    }
    let now = sync.now();
    let mut next = cursor.clone();
    next.imap = Some(ImapCursor {
        uid_validity: validity,
        last_uid: last,
        highest_modseq: modseq,
    });
    let recorded_stored = records
        .iter()
        .filter(|r| r.outcome == RecordedOutcome::Stored)
        .count() as i64;
    next.delivered += recorded_stored;
    next.skipped += records.len() as i64 - recorded_stored;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MailboxSpec, OAuthApp};

    /// Mail dated in the cutoff's own second is processed: its date has whole
    /// seconds, the cutoff may not.
    #[test]
    fn the_cutoff_is_taken_at_its_whole_second() {
        let mut spec = MailboxSpec::user("a@example.test");
        spec.process_email_received_after = Some(Timestamp::from_unix_millis(1_800_000_000_999));
        let mailbox = Mailbox::from_spec(spec, None, Timestamp::now_utc()).unwrap();
        let mut profile = ServerProfile::gmail("p", OAuthApp::google("id", "secret"));
        let from = process_from(&mailbox, &profile).unwrap();
        assert_eq!(from.unix_millis(), 1_800_000_000_000);

        // The later of the two wins.
        profile.processing.process_email_received_after =
            Some(Timestamp::from_unix_millis(1_800_000_005_500));
        assert_eq!(
            process_from(&mailbox, &profile).unwrap().unix_millis(),
            1_800_000_005_000
        );
    }
}
