//! Printing: aligned tables for people, JSON for scripts, one-line errors.

use mailsync::model::{ConnectionState, Mailbox, ServerProfile, TestStatus};
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
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// An instant as RFC 3339 (`2026-11-24T15:09:52Z`), to the second.
pub fn timestamp(at: time::OffsetDateTime) -> String {
    let at = at.replace_nanosecond(0).unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// Prints a value as pretty JSON.
pub fn json_value(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into())
    );
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
pub fn profile_details(profile: &ServerProfile, mailbox_count: u32) {
    let e = &profile.incoming.endpoint;
    println!("Profile            {}", profile.name);
    println!("Id                 {}", profile.id);
    println!("Server type        {}", enum_text(&profile.server_type));
    println!("Authentication     {}", auth_text(profile));
    if let Some(app) = profile.oauth_app() {
        println!("Client id          {}", app.client_id);
        println!(
            "Client secret      {}",
            if app.client_secret.is_some() {
                "set (sealed)"
            } else {
                "not set"
            }
        );
        println!("Redirect URI       {}", app.redirect_uri().unwrap_or("-"));
        println!("JavaScript origins {}", app.javascript_origins.join(", "));
        for w in app.warnings() {
            println!("Warning            {} ({})", w.message, w.code);
        }
    }
    println!(
        "Incoming           {} {}:{} {}",
        enum_text(&profile.incoming.protocol),
        e.host,
        e.port,
        enum_text(&e.security)
    );
    println!(
        "Outgoing           smtp {}:{} {}",
        profile.outgoing.host,
        profile.outgoing.port,
        enum_text(&profile.outgoing.security)
    );
    println!(
        "Default            {}",
        yes_no(profile.default_for_new_mailboxes)
    );
    println!(
        "Mailboxes          {mailbox_count} of {}",
        profile.mailbox_capacity
    );
    let p = &profile.processing;
    println!("Polling interval   {} min", p.min_polling_interval_minutes);
    println!("Max connections    {}", p.max_concurrent_connections);
    println!("Connection timeout {} s", p.connection_timeout_secs);
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
pub fn mailbox_row(mailbox: &Mailbox, profile_name: &str) -> Vec<String> {
    vec![
        mailbox.email.clone(),
        profile_name.to_owned(),
        enum_text(&mailbox.incoming_delivery),
        enum_text(&mailbox.outgoing_delivery),
        connection_text(&mailbox.connection),
        format!(
            "{}/{}",
            test_text(&mailbox.incoming_test),
            test_text(&mailbox.outgoing_test)
        ),
    ]
}

/// A mailbox for people.
pub fn mailbox_details(mailbox: &Mailbox, profile_name: &str) {
    println!("Mailbox            {}", mailbox.email);
    println!("Id                 {}", mailbox.id);
    println!("Name               {}", mailbox.name);
    println!(
        "Owner              {}",
        serde_json::to_value(&mailbox.owner)
            .map(|v| v.to_string())
            .unwrap_or_default()
    );
    println!("Profile            {profile_name}");
    println!(
        "Incoming           {} (enabled: {})",
        enum_text(&mailbox.incoming_delivery),
        yes_no(mailbox.incoming_enabled)
    );
    println!(
        "Outgoing           {} (enabled: {})",
        enum_text(&mailbox.outgoing_delivery),
        yes_no(mailbox.outgoing_enabled)
    );
    println!("Approval           {}", enum_text(&mailbox.approval));
    println!(
        "Connection         {}",
        connection_text(&mailbox.connection)
    );
    println!("Incoming test      {}", test_text(&mailbox.incoming_test));
    println!("Outgoing test      {}", test_text(&mailbox.outgoing_test));
    for alert in &mailbox.alerts {
        println!(
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

fn connection_text(state: &ConnectionState) -> String {
    match state {
        ConnectionState::NotConnected => "not_connected".into(),
        ConnectionState::AwaitingConsent { .. } => "awaiting_consent".into(),
        ConnectionState::Connected { account, .. } => format!("connected ({account})"),
        ConnectionState::NeedsReconsent { code, .. } => format!("needs_reconsent ({code})"),
    }
}

fn test_text(status: &TestStatus) -> String {
    match status {
        TestStatus::NotRun => "not_run".into(),
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
