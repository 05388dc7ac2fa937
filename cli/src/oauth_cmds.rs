//! `mailsync mailbox connect|complete|disconnect|token`: the OAuth lifecycle
//! of a mailbox from a terminal (see docs/oauth.md).

use clap::Subcommand;
use mailsync::directory::MailboxStatus;
use mailsync::{Error, ErrorCode};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::profile_cmds::MailboxCmd;
use crate::{Ctx, output};

/// `mailsync mailbox ...`: the directory commands plus the OAuth ones.
#[derive(Subcommand)]
pub enum MailboxAll {
    #[command(flatten)]
    Directory(MailboxCmd),
    #[command(flatten)]
    OAuth(OAuthCmd),
}

#[derive(Subcommand)]
pub enum OAuthCmd {
    /// Starts connecting a mailbox to Gmail: prints the consent URL, or with
    /// --listen serves the redirect URI (a loopback one) and completes by itself.
    Connect {
        /// Mailbox address or id.
        mailbox: String,
        /// Serve the profile's loopback redirect URI and complete automatically.
        #[arg(long)]
        listen: bool,
        /// With --listen: do not try to open a browser.
        #[arg(long)]
        no_browser: bool,
    },
    /// Completes a connection from the redirect URL the browser landed on.
    Complete {
        /// The full redirect URL (or its query string).
        url: String,
    },
    /// Revokes the grant at the provider and deletes the tokens.
    Disconnect {
        /// Mailbox address or id.
        mailbox: String,
    },
    /// Obtains a valid access token (refreshing if needed) and reports on
    /// it: account, expiry, scopes — never the token itself.
    Token {
        /// Mailbox address or id.
        mailbox: String,
        /// Only look at the stored grant, without refreshing or contacting
        /// anyone: is its access token still valid, and since when is it due?
        #[arg(long, conflicts_with = "print")]
        check: bool,
        /// Print the access token itself on stdout (for scripts; handle with care).
        #[arg(long)]
        print: bool,
    },
}

pub async fn run(ctx: &Ctx, cmd: OAuthCmd) -> Result<(), Error> {
    match cmd {
        OAuthCmd::Connect {
            mailbox,
            listen,
            no_browser,
        } => {
            let mailbox = ctx.sync.directory().find_mailbox(&mailbox).await?;
            let consent = ctx.sync.connections().connect(&mailbox.id).await?;
            if !listen {
                if ctx.json {
                    output::json_value(&json!({
                        "mailbox": mailbox.email,
                        "url": consent.url.as_str(),
                        "expires_at": output::timestamp(consent.expires_at),
                    }));
                } else {
                    outln!("Open this URL as {} to give consent:", mailbox.email);
                    outln!("{}", consent.url);
                    outln!(
                        "It expires at {}. Then run: mailsync mailbox complete '<redirect URL>'",
                        output::timestamp(consent.expires_at)
                    );
                }
                return Ok(());
            }
            let profile = ctx
                .sync
                .directory()
                .get_profile(mailbox.profile_id.as_ref().ok_or_else(|| {
                    Error::validation("profile_id", "the mailbox has no server profile")
                })?)
                .await?;
            let redirect = profile
                .oauth_app()
                .and_then(|a| a.redirect_uri())
                .unwrap_or_default()
                .to_owned();
            let (mut browser, callback) = listen_once(
                &redirect,
                consent.url.as_str(),
                consent.expires_at,
                !no_browser,
            )
            .await?;
            let outcome = ctx.sync.connections().complete(&callback).await;
            // The browser waits for its page until the outcome is known.
            respond(&mut browser, "200 OK", &outcome_page(&outcome)).await;
            let mailbox = outcome?;
            print_mailbox(ctx, &mailbox);
            Ok(())
        }
        OAuthCmd::Complete { url } => {
            let mailbox = ctx.sync.connections().complete(&url).await?;
            print_mailbox(ctx, &mailbox);
            Ok(())
        }
        OAuthCmd::Disconnect { mailbox } => {
            let mailbox = ctx.sync.directory().find_mailbox(&mailbox).await?;
            let mailbox = ctx.sync.connections().disconnect(&mailbox.id).await?;
            print_mailbox(ctx, &mailbox);
            Ok(())
        }
        OAuthCmd::Token {
            mailbox,
            check,
            print,
        } => {
            let mailbox = ctx.sync.directory().find_mailbox(&mailbox).await?;
            if check {
                return check_grant(ctx, &mailbox).await;
            }
            let token = ctx.sync.connections().access_token(&mailbox.id).await?;
            if print {
                outln!("{}", token.token.expose());
                return Ok(());
            }
            let info = ctx.sync.connections().grant_info(&mailbox.id).await?;
            let scopes = info
                .as_ref()
                .map(|i| i.scopes.join(" "))
                .unwrap_or_default();
            let expires = token
                .expires_at
                .map(output::timestamp)
                .unwrap_or_else(|| "unknown".into());
            if ctx.json {
                output::json_value(&json!({
                    "mailbox": mailbox.email,
                    "valid": true,
                    "account": token.account,
                    "expires_at": expires,
                    "scopes": scopes,
                    "has_refresh_token": info.as_ref().is_some_and(|i| i.has_refresh_token),
                }));
            } else {
                outln!(
                    "{}: valid access token for {}, expires {expires}",
                    mailbox.email,
                    token.account
                );
                outln!("scopes: {scopes}");
            }
            Ok(())
        }
    }
}

fn print_mailbox(ctx: &Ctx, status: &MailboxStatus) {
    if ctx.json {
        output::json_value(&json!(status));
    } else {
        outln!(
            "{}: {}",
            status.mailbox.email,
            output::connection_text(&status.state)
        );
    }
}

/// `token --check`: the stored grant, read only.
async fn check_grant(ctx: &Ctx, mailbox: &mailsync::model::Mailbox) -> Result<(), Error> {
    let Some(info) = ctx.sync.connections().grant_info(&mailbox.id).await? else {
        return Err(Error::new(
            ErrorCode::NotConnected,
            format!(
                "mailbox {} is not connected; connect it first",
                mailbox.email
            ),
        ));
    };
    let now = mailsync::Timestamp::now_utc();
    let valid = info.expires_at.is_none_or(|at| at > now);
    let expires = info
        .expires_at
        .map(output::timestamp)
        .unwrap_or_else(|| "unknown".into());
    if ctx.json {
        output::json_value(&json!({
            "mailbox": mailbox.email,
            "valid": valid,
            "account": info.account,
            "issuer": info.issuer,
            "expires_at": expires,
            "scopes": info.scopes.join(" "),
            "has_refresh_token": info.has_refresh_token,
        }));
    } else if valid {
        outln!(
            "{}: stored access token for {} is valid until {expires} (not refreshed)",
            mailbox.email,
            info.account
        );
    } else {
        outln!(
            "{}: stored access token for {} expired at {expires}; it is refreshed on next use",
            mailbox.email,
            info.account
        );
    }
    Ok(())
}

/// The page the browser lands on after consent: what happened and what to do.
fn outcome_page(outcome: &Result<MailboxStatus, Error>) -> String {
    let (title, text) = match outcome {
        Ok(status) => (
            "Connected".to_owned(),
            format!(
                "{} is connected. You can close this window and return to the terminal.",
                status.mailbox.email
            ),
        ),
        Err(e) if e.code() == ErrorCode::ConsentDenied => (
            "Access declined".to_owned(),
            format!("Access was declined [{}]. {}", e.code(), e.next_action()),
        ),
        Err(e) => (
            "Connecting failed".to_owned(),
            format!(
                "{} [{}]. {}",
                e.message().trim_end_matches('.'),
                e.code(),
                e.next_action()
            ),
        ),
    };
    format!(
        "<!DOCTYPE html><meta charset=\"utf-8\"><title>mailsync: {t}</title><h1>{t}</h1><p>{p}</p>",
        t = html_escape(&title),
        p = html_escape(&text)
    )
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn respond(stream: &mut tokio::net::TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Serves the profile's loopback redirect URI until one redirect with
/// `state` arrives (or the consent expires); returns the browser's
/// connection (to answer once the outcome is known) and the query.
async fn listen_once(
    redirect_uri: &str,
    consent_url: &str,
    expires_at: mailsync::Timestamp,
    open_browser: bool,
) -> Result<(tokio::net::TcpStream, String), Error> {
    let redirect = url::Url::parse(redirect_uri)
        .map_err(|e| Error::validation("redirect_uris[0]", format!("not a URL: {e}")))?;
    let host = redirect.host_str().unwrap_or_default().to_owned();
    if redirect.scheme() != "http" || !mailsync::model::validate::is_loopback_host(&host) {
        return Err(Error::validation(
            "redirect_uris[0]",
            format!(
                "--listen needs a loopback http redirect URI on the profile, not {redirect_uri}; \
                 open the URL without --listen and run `mailsync mailbox complete URL`"
            ),
        ));
    }
    let port = redirect.port_or_known_default().unwrap_or(80);
    let bind = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host.trim_matches(['[', ']']).to_owned()
    };
    let listener = tokio::net::TcpListener::bind((bind.as_str(), port))
        .await
        .map_err(|e| {
            Error::new(
                ErrorCode::Network,
                format!("cannot listen on {host}:{port}: {e}"),
            )
        })?;
    eprintln!("Waiting for the redirect on {redirect_uri}");
    eprintln!("Open this URL to give consent:\n{consent_url}");
    if open_browser {
        for opener in ["xdg-open", "open"] {
            if std::process::Command::new(opener)
                .arg(consent_url)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .is_ok()
            {
                break;
            }
        }
    }
    let left = expires_at.since(mailsync::Timestamp::now_utc());
    let deadline = tokio::time::Instant::now() + left;
    loop {
        let accepted = tokio::time::timeout_at(deadline, listener.accept())
            .await
            .map_err(|_| {
                Error::new(
                    ErrorCode::StateInvalid,
                    "the consent expired before the redirect arrived",
                )
            })?;
        let (mut stream, _) = accepted
            .map_err(|e| Error::new(ErrorCode::Network, format!("redirect listener: {e}")))?;
        let mut buf = vec![0u8; 8192];
        let n = match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => continue,
        };
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let is_redirect =
            path == redirect.path() && (query.contains("state=") || query.contains("error="));
        if is_redirect {
            // complete_connect takes the query alone.
            return Ok((stream, format!("?{query}")));
        }
        respond(
            &mut stream,
            "404 Not Found",
            "<!DOCTYPE html><title>mailsync</title><p>Not found.</p>",
        )
        .await;
    }
}
