//! `mailsync mailbox test-enable` and `mailsync profile test-all`: the
//! per-step report of "Test & Enable Mailbox".

use mailsync::Error;
use mailsync::checks::{DirectionReport, TestOptions, TestReport};

use crate::Ctx;
use crate::output;

fn print_direction(label: &str, d: &DirectionReport) {
    let verdict = if d.success { "passed" } else { "FAILED" };
    outln!(
        "  {label:<9}{} {} — {verdict} in {} ms",
        d.protocol,
        d.server,
        d.duration_ms
    );
    for step in &d.steps {
        let mark = if step.ok { "ok  " } else { "FAIL" };
        let detail = step
            .detail
            .as_deref()
            .map(|t| format!("  {t}"))
            .unwrap_or_default();
        outln!(
            "    {mark} {:<13}{:>5} ms{detail}",
            step.step,
            step.duration_ms
        );
    }
    if let Some(diag) = &d.diagnosis {
        let retry = if diag.transient {
            "will be retried"
        } else {
            "direction disabled"
        };
        outln!("    => {} [{}], {retry}", diag.message, diag.code);
        outln!("    => what to do: {}", diag.next_action);
    }
}

fn print_report(report: &TestReport) {
    let verdict = if report.is_success() {
        "ENABLED"
    } else {
        "NEEDS ATTENTION"
    };
    outln!("{}: {verdict}", report.email);
    if let Some(d) = &report.incoming {
        print_direction("incoming", d);
    }
    if let Some(d) = &report.outgoing {
        print_direction("outgoing", d);
    }
    outln!(
        "  enabled: incoming {}, outgoing {}",
        if report.incoming_enabled { "yes" } else { "no" },
        if report.outgoing_enabled { "yes" } else { "no" }
    );
}

/// The command fails (exit 1) when a check failed, so scripts can branch on it.
fn verdict(reports: &[TestReport]) -> Result<(), Error> {
    match reports
        .iter()
        .find_map(|r| r.first_failure().map(|d| (r, d)))
    {
        None => Ok(()),
        Some((r, d)) => {
            let code = d.code;
            Err(Error::new(
                code,
                format!("{}: {} failed: {}", r.email, d.step, d.message),
            ))
        }
    }
}

pub async fn test_enable(ctx: &Ctx, mailbox: &str, send_test_message: bool) -> Result<(), Error> {
    let mailbox = ctx.sync.directory().find_mailbox(mailbox).await?;
    let options = TestOptions { send_test_message };
    let report = ctx
        .sync
        .checks()
        .test_and_enable(&mailbox.id, &options)
        .await?;
    if ctx.json {
        output::json_value(&serde_json::json!(report));
    } else {
        print_report(&report);
    }
    verdict(std::slice::from_ref(&report))
}

pub async fn test_all(ctx: &Ctx, profile: &str, send_test_message: bool) -> Result<(), Error> {
    let profile = ctx.sync.directory().find_profile(profile).await?;
    let options = TestOptions { send_test_message };
    let reports = ctx.sync.checks().test_all(&profile.id, &options).await?;
    if ctx.json {
        output::json_value(&serde_json::json!(reports));
    } else {
        for report in &reports {
            print_report(report);
        }
        let ok = reports.iter().filter(|r| r.is_success()).count();
        outln!("{ok} of {} mailboxes passed", reports.len());
    }
    verdict(&reports)
}
