//! Printing: aligned tables for people, JSON for scripts, one-line errors.

use mailsync::directory::MailboxStatus;
use mailsync::lifecycle::{DirectionStatus, GrantStatus, MailboxState, TestStatus};
use mailsync::model::{LastTestResult, ServerProfile, Timestamp};
use mailsync::{Error, ErrorCode};
use serde_json::json;

/// Prints rows under a header with columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// An instant as RFC 3339 (`2026-11-24T15:09:52Z`), to the second.
pub fn timestamp(at: Timestamp) -> String {
    at.to_rfc3339_seconds()
}

/// Prints a value as pretty JSON.
pub fn json_value(value: &serde_json::Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into())
    );
}

/// Prints a value as one compact JSON line (JSON-lines output).
pub fn json_line(value: &serde_json::Value) {
    outln!("{value}");
}

/// A profile as JSON: the record (no secrets) plus derived facts.
pub fn profile_json(profile: &ServerProfile, mailbox_count: u32) -> serde_json::Value {
    let app = profile.oauth_app();
    json!({
        "profile": profile,
        "mailbox_count": mailbox_count,
        "has_client_secret": app.map(|a| a.client_secret.is_some()),
        "warnings": app.map(|a| a.warnings()).unwrap_or_default(),
    })
}

/// A profile for people.
pub fn profile_details(
    profile: &ServerProfile,
    mailbox_count: u32,
    last_test: Option<&LastTestResult>,
) {
    let e = &profile.incoming.endpoint;
    outln!("Profile            {}", profile.name);
    outln!("Id                 {}", profile.id);
    outln!("Server type        {}", enum_text(&profile.server_type));
    outln!("Authentication     {}", auth_text(profile));
    if let Some(app) = profile.oauth_app() {
        outln!("Client id          {}", app.client_id);
        outln!(
            "Client secret      {}",
            if app.client_secret.is_some() {
                "set (sealed)"
            } else {
                "not set"
            }
        );
        outln!("Redirect URI       {}", app.redirect_uri().unwrap_or("-"));
        outln!("JavaScript origins {}", app.javascript_origins.join(", "));
        for w in app.warnings() {
            outln!("Warning            {} ({})", w.message, w.code);
        }
    }
    outln!(
        "Incoming           {} {}:{} {}",
        enum_text(&profile.incoming.protocol),
        e.host,
        e.port,
        enum_text(&e.security)
    );
    outln!(
        "Outgoing           smtp {}:{} {}",
        profile.outgoing.host,
        profile.outgoing.port,
        enum_text(&profile.outgoing.security)
    );
    outln!(
        "Default            {}",
        yes_no(profile.default_for_new_mailboxes)
    );
    outln!(
        "Mailboxes          {mailbox_count} of {}",
        profile.mailbox_capacity
    );
    let p = &profile.processing;
    outln!("Polling interval   {} min", p.min_polling_interval_minutes);
    outln!("Max connections    {}", p.max_concurrent_connections);
    outln!("Connection timeout {} s", p.connection_timeout_secs);
    if let Some(t) = last_test {
        outln!(
            "Last test          {} {} ({} ms): {}",
            timestamp(t.at),
            enum_text(&t.outcome),
            t.duration_ms,
            t.message
        );
    }
}

/// A one-row summary of a profile.
pub fn profile_row(profile: &ServerProfile, count: u32) -> Vec<String> {
    vec![
        profile.name.clone(),
        enum_text(&profile.server_type),
        auth_text(profile),
        format!(
            "{}:{}",
            profile.incoming.endpoint.host, profile.incoming.endpoint.port
        ),
        format!("{}:{}", profile.outgoing.host, profile.outgoing.port),
        format!("{count}/{}", profile.mailbox_capacity),
        if profile.default_for_new_mailboxes {
            "yes".into()
        } else {
            String::new()
        },
    ]
}

/// A one-row summary of a mailbox.
pub fn mailbox_row(status: &MailboxStatus, profile_name: &str) -> Vec<String> {
    let (mailbox, state) = (&status.mailbox, &status.state);
    vec![
        mailbox.email.clone(),
        profile_name.to_owned(),
        enum_text(&mailbox.incoming_delivery),
        enum_text(&mailbox.outgoing_delivery),
        connection_text(state),
        format!(
            "{}/{}",
            direction_text(&state.incoming.status),
            direction_text(&state.outgoing.status)
        ),
    ]
}

/// A mailbox with its state and alerts, for people.
pub fn mailbox_details(status: &MailboxStatus, profile_name: &str) {
    let (mailbox, state) = (&status.mailbox, &status.state);
    outln!("Mailbox            {}", mailbox.email);
    outln!("Id                 {}", mailbox.id);
    outln!("Name               {}", mailbox.name);
    outln!(
        "Owner              {}",
        serde_json::to_value(&mailbox.owner)
            .map(|v| v.to_string())
            .unwrap_or_default()
    );
    outln!("Profile            {profile_name}");
    outln!(
        "Incoming           {} — {} (last test: {})",
        enum_text(&mailbox.incoming_delivery),
        direction_text(&state.incoming.status),
        test_text(&state.incoming.last_test)
    );
    outln!(
        "Outgoing           {} — {} (last test: {})",
        enum_text(&mailbox.outgoing_delivery),
        direction_text(&state.outgoing.status),
        test_text(&state.outgoing.last_test)
    );
    outln!("Incoming filter    {}", enum_text(&mailbox.incoming_filter));
    outln!(
        "Process email from {}",
        mailbox
            .process_email_received_after
            .map(timestamp)
            .unwrap_or_else(|| "any time".into())
    );
    outln!("Approval           {}", enum_text(&mailbox.approval));
    outln!("Connection         {}", connection_text(state));
    for alert in &status.alerts {
        outln!(
            "Alert              {} {} {}: {}",
            timestamp(alert.at),
            enum_text(&alert.level),
            alert.code,
            alert.message
        );
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The serde (snake_case) name of an enum value.
pub fn enum_text<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

fn auth_text(profile: &ServerProfile) -> String {
    match serde_json::to_value(&profile.authentication) {
        Ok(v) => v
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("?")
            .to_owned(),
        Err(_) => "?".into(),
    }
}

/// The grant (and a pending consent) in one phrase: `connected (alice@…)`.
pub fn connection_text(state: &MailboxState) -> String {
    let grant = match &state.grant {
        GrantStatus::NotConnected {} => "not_connected".to_owned(),
        GrantStatus::Connected { account, .. } => format!("connected ({account})"),
        GrantStatus::NeedsReconsent { code, .. } => format!("needs_reconsent ({code})"),
    };
    match &state.pending_consent {
        Some(p) if p.expires_at > Timestamp::now_utc() => {
            format!("{grant}, consent pending until {}", timestamp(p.expires_at))
        }
        _ => grant,
    }
}

/// A direction's status in one phrase.
pub fn direction_text(status: &DirectionStatus) -> String {
    match status {
        DirectionStatus::NotTested {} => "not_tested".into(),
        DirectionStatus::Enabled { .. } => "enabled".into(),
        DirectionStatus::Retrying {
            failures,
            code,
            next_attempt,
            ..
        } => format!(
            "retrying ({code}, {failures} failure(s), next {})",
            timestamp(*next_attempt)
        ),
        DirectionStatus::Disabled { code, .. } => format!("disabled ({code})"),
    }
}

fn test_text(status: &TestStatus) -> String {
    match status {
        TestStatus::NotRun {} => "not_run".into(),
        TestStatus::Success { .. } => "success".into(),
        TestStatus::Failure { code, .. } => format!("failure ({code})"),
    }
}

/// Prints an error: one line for people, a JSON object with `--json`.
pub fn error(err: &Error, json: bool) {
    if json {
        eprintln!(
            "{}",
            json!({
                "error": {
                    "code": err.code().as_str(),
                    "message": err.message(),
                    "field": err.field(),
                    "transient": err.is_transient(),
                    "next_action": err.next_action(),
                }
            })
        );
    } else {
        let message = err.message().replace('\n', " ");
        eprintln!("mailsync: {message} [{}]", err.code());
    }
}

/// Prints every error code.
pub fn error_codes(json: bool) {
    if json {
        let all: Vec<_> = ErrorCode::ALL
            .iter()
            .map(|c| json!({"code": c.as_str(), "transient": c.is_transient(), "next_action": c.next_action()}))
            .collect();
        json_value(&serde_json::Value::Array(all));
    } else {
        let rows: Vec<Vec<String>> = ErrorCode::ALL
            .iter()
            .map(|c| {
                vec![
                    c.as_str().to_owned(),
                    yes_no(c.is_transient()).to_owned(),
                    c.next_action().to_owned(),
                ]
            })
            .collect();
        table(&["CODE", "TRANSIENT", "WHAT TO DO"], &rows);
    }
}
