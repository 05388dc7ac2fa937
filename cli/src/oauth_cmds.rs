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
        /// The full redirect URL (or its query string), or `-` to read it
        /// from stdin: preferred, as it keeps the authorization code out of
        /// the process list and the shell history.
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
                        "It expires at {}. Then paste the redirect URL into: mailsync mailbox complete -",
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
            let state = url::Url::parse(consent.url.as_str())
                .ok()
                .and_then(|u| {
                    u.query_pairs()
                        .find(|(k, _)| k == "state")
                        .map(|(_, v)| v.into_owned())
                })
                .ok_or_else(|| Error::new(ErrorCode::Internal, "the consent URL has no state"))?;
            let (mut browser, callback) = listen_once(
                &redirect,
                consent.url.as_str(),
                &state,
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
            let url = if url == "-" {
                redirect_from_stdin()?
            } else {
                url
            };
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

/// The longest redirect read from stdin; the library refuses anything over
/// 8 KiB anyway, this only bounds the read.
const MAX_STDIN_REDIRECT: u64 = 64 * 1024;

/// `complete -`: the redirect URL from stdin (its first non-empty line).
fn redirect_from_stdin() -> Result<String, Error> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin()
        .take(MAX_STDIN_REDIRECT)
        .read_to_string(&mut text)
        .map_err(|e| Error::validation("url", format!("cannot read stdin: {e}")))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| Error::validation("url", "stdin held no redirect URL"))
}

/// Whether a redirect's query carries exactly one `state`, equal to
/// `expected` (compared in constant time).
fn state_matches(query: &str, expected: &str) -> bool {
    let mut states = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned());
    let (Some(state), None) = (states.next(), states.next()) else {
        return false;
    };
    let (a, b) = (state.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// Reads an HTTP request's head (up to the blank line, at most 8 KiB): a
/// client may send it in several segments. `None` when the connection
/// closes first or the head is too long.
async fn read_request_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<Option<String>> {
    const MAX_HEAD: usize = 8192;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(None);
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(String::from_utf8_lossy(&head).into_owned()))
}

async fn respond(stream: &mut tokio::net::TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Serves the profile's loopback redirect URI until the redirect carrying
/// `state` — the one of this consent — arrives (or the consent expires);
/// returns the browser's connection (to answer once the outcome is known)
/// and the query. A redirect with another state (a stale tab, another
/// consent, a page on this machine forging one) is answered 400 and
/// ignored: only the awaited one is passed to the library, which would
/// spend its own state on it otherwise.
async fn listen_once(
    redirect_uri: &str,
    consent_url: &str,
    state: &str,
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
        let Ok(Ok(Some(head))) =
            tokio::time::timeout(Duration::from_secs(10), read_request_head(&mut stream)).await
        else {
            continue;
        };
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path == redirect.path() {
            if state_matches(query, state) {
                // complete_connect takes the query alone.
                return Ok((stream, format!("?{query}")));
            }
            respond(
                &mut stream,
                "400 Bad Request",
                "<!DOCTYPE html><meta charset=\"utf-8\"><title>mailsync: not this consent</title>\
                 <h1>Not this consent</h1><p>This redirect does not belong to the consent mailsync is \
                 waiting for (its state does not match), so it was ignored. Finish the consent in the \
                 window mailsync opened, or start it again.</p>",
            )
            .await;
            continue;
        }
        respond(
            &mut stream,
            "404 Not Found",
            "<!DOCTYPE html><title>mailsync</title><p>Not found.</p>",
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connects to the listener, retrying while it is not bound yet.
    async fn connect(port: u16) -> tokio::net::TcpStream {
        for _ in 0..500 {
            if let Ok(c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the listener never listened on {port}");
    }

    /// A browser landing on `target`: the page it is shown.
    async fn land(port: u16, target: &str) -> String {
        let mut c = connect(port).await;
        c.write_all(format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut page = String::new();
        c.read_to_string(&mut page).await.unwrap();
        page
    }

    #[test]
    fn only_the_awaited_state_matches() {
        assert!(state_matches("code=c&state=abc", "abc"));
        assert!(state_matches("error=access_denied&state=abc", "abc"));
        assert!(!state_matches("code=c&state=abd", "abc"));
        assert!(!state_matches("code=c&state=ab", "abc"));
        assert!(!state_matches("code=c", "abc"));
        assert!(!state_matches("state=abc&state=abc", "abc"));
        assert!(!state_matches("state=abc&state=x", "abc"));
    }

    /// A redirect with a wrong (or no) state gets a 400 page and the
    /// listener keeps waiting; the one with the consent's state is taken.
    #[tokio::test]
    async fn listen_ignores_redirects_of_another_state() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let redirect = format!("http://127.0.0.1:{port}/_grid/cmds/dlg_gmailoauth.aspx");
        let expires = mailsync::Timestamp::now_utc().plus(Duration::from_secs(60));
        let listener = tokio::spawn({
            let redirect = redirect.clone();
            async move {
                listen_once(
                    &redirect,
                    "https://accounts.example.test/auth?state=the-right-state",
                    "the-right-state",
                    expires,
                    false,
                )
                .await
            }
        });
        let path = "/_grid/cmds/dlg_gmailoauth.aspx";
        for query in [
            "code=attacker&state=another-state",
            "error=access_denied&state=another-state",
            "code=attacker",
            "code=c&state=the-right-state&state=the-right-state",
        ] {
            let page = land(port, &format!("{path}?{query}")).await;
            assert!(page.starts_with("HTTP/1.1 400 "), "{query}: {page}");
            assert!(page.contains("Not this consent"), "{page}");
            assert!(!listener.is_finished(), "{query} ended the listener");
        }
        let page = land(port, "/favicon.ico").await;
        assert!(page.starts_with("HTTP/1.1 404 "), "{page}");

        // The awaited redirect, its head sent in segments as a client may.
        let mut browser = connect(port).await;
        browser.set_nodelay(true).unwrap();
        for part in [
            "GET ".to_owned(),
            format!("{path}?code=good&state=the-right-state"),
            " HTTP/1.1\r\nHost: x\r\n".to_owned(),
            "\r\n".to_owned(),
        ] {
            browser.write_all(part.as_bytes()).await.unwrap();
            browser.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        let (_held, query) = tokio::time::timeout(Duration::from_secs(10), listener)
            .await
            .expect("the listener took the redirect")
            .unwrap()
            .unwrap();
        assert_eq!(query, "?code=good&state=the-right-state");
    }
}
