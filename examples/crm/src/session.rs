//! Sessions and CSRF protection.
//!
//! Every browser gets a session cookie (`crm_session`: random, `HttpOnly`,
//! `SameSite=Lax`, `Path=/`, and `Secure` when the app is served over
//! https). The session holds a random CSRF token that every form carries
//! in a hidden `csrf` field; [`guard`] checks it (in constant time) on every
//! request that is not GET or HEAD, before any handler runs, and refuses
//! the request with 403 when it is missing or wrong, or when the request's
//! `Origin` is not this app. The session also keeps one-shot notices for
//! the next page (post/redirect/get) and the consent `state`s it started,
//! so the OAuth callback knows which mailbox to send the user back to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use mailsync::checks::TestReport;
use mailsync::model::MailboxId;
use subtle::ConstantTimeEq;

use crate::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "crm_session";

/// The form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// Largest form body accepted.
const MAX_FORM_BYTES: usize = 256 * 1024;

/// Sessions idle longer than this are forgotten.
const IDLE: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept at once (the oldest idle ones go first).
const MAX_SESSIONS: usize = 10_000;

/// A one-shot message for the next page.
#[derive(Debug, Clone)]
pub enum Flash {
    /// Something worked.
    Notice(String),
    /// Something failed: the error's code, message and next action.
    Error {
        /// Stable error code.
        code: String,
        /// What happened.
        message: String,
        /// What to do.
        next_action: String,
    },
    /// A Test & Enable report, for the mailbox page.
    Report(Box<TestReport>),
}

impl Flash {
    /// A failure from an error.
    pub fn error(e: &mailsync::Error) -> Flash {
        Flash::Error {
            code: e.code().as_str().to_owned(),
            message: e.message().to_owned(),
            next_action: e.next_action().to_owned(),
        }
    }
}

#[derive(Debug)]
struct Session {
    csrf: String,
    flash: Vec<Flash>,
    /// Consent `state` → the mailbox it is for (the latest few).
    consents: Vec<(String, MailboxId)>,
    seen: Instant,
}

/// The sessions of this process (in memory: a restart logs everyone out,
/// which for this example only means new CSRF tokens).
#[derive(Debug, Default, Clone)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, Session>>>,
}

/// The request's session, as handlers see it.
#[derive(Debug, Clone)]
pub struct SessionCtx {
    /// The session id (the cookie's value).
    pub id: String,
    /// The session's CSRF token, for the forms of the page.
    pub csrf: String,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session with this id (touched), or a new one.
    fn get_or_create(&self, id: Option<&str>) -> (SessionCtx, bool) {
        let mut sessions = self.lock();
        if let Some(id) = id
            && let Some(session) = sessions.get_mut(id)
            && session.seen.elapsed() < IDLE
        {
            session.seen = Instant::now();
            return (
                SessionCtx {
                    id: id.to_owned(),
                    csrf: session.csrf.clone(),
                },
                false,
            );
        }
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.seen.elapsed() < IDLE);
            if sessions.len() >= MAX_SESSIONS
                && let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.seen)
                    .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        let ctx = SessionCtx {
            id: random_token(),
            csrf: random_token(),
        };
        sessions.insert(
            ctx.id.clone(),
            Session {
                csrf: ctx.csrf.clone(),
                flash: Vec::new(),
                consents: Vec::new(),
                seen: Instant::now(),
            },
        );
        (ctx, true)
    }

    /// Adds a message for the session's next page.
    pub fn flash(&self, session: &SessionCtx, flash: Flash) {
        if let Some(s) = self.lock().get_mut(&session.id) {
            s.flash.push(flash);
        }
    }

    /// Takes the session's pending messages.
    pub fn take_flash(&self, session: &SessionCtx) -> Vec<Flash> {
        self.lock()
            .get_mut(&session.id)
            .map(|s| std::mem::take(&mut s.flash))
            .unwrap_or_default()
    }

    /// Remembers that this session started a consent with this `state`.
    pub fn remember_consent(&self, session: &SessionCtx, state: String, mailbox: MailboxId) {
        if let Some(s) = self.lock().get_mut(&session.id) {
            s.consents.retain(|(st, _)| st != &state);
            s.consents.push((state, mailbox));
            let excess = s.consents.len().saturating_sub(16);
            s.consents.drain(..excess);
        }
    }

    /// The mailbox a consent `state` of this session was for.
    pub fn consent_mailbox(&self, session: &SessionCtx, state: &str) -> Option<MailboxId> {
        self.lock().get(&session.id).and_then(|s| {
            s.consents
                .iter()
                .find(|(st, _)| st.as_bytes().ct_eq(state.as_bytes()).into())
                .map(|(_, m)| m.clone())
        })
    }
}

fn cookie_value<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for a session.
pub fn session_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

fn forbidden(why: &str) -> Response {
    let page = crate::views::ErrorPage {
        nav: crate::views::Nav::none(),
        title: "Request refused".into(),
        code: "csrf".into(),
        message: why.into(),
        next_action: "Reload the page and submit the form again.".into(),
    };
    (StatusCode::FORBIDDEN, crate::views::render(&page)).into_response()
}

/// Whether the `Origin` header (when the browser sent one) names this
/// app: the host the request was sent to.
fn origin_matches(request: &Request) -> bool {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    match url::Url::parse(origin) {
        Ok(url) => {
            let origin_host = match (url.host_str(), url.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_owned(),
                _ => return false,
            };
            origin_host.eq_ignore_ascii_case(host)
        }
        Err(_) => false,
    }
}

/// The session and CSRF middleware (see the module docs), plus the
/// security headers of every response.
pub async fn guard(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let (ctx, created) = app.sessions.get_or_create(cookie_value(&request, COOKIE));
    let mut request = request;
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        if created {
            return finish(
                forbidden(
                    "Your session is new or expired: the form's security token does not belong to it.",
                ),
                &ctx,
                true,
                app.config.secure_cookies,
            );
        }
        if !origin_matches(&request) {
            return finish(
                forbidden("The form was not sent from this application."),
                &ctx,
                false,
                app.config.secure_cookies,
            );
        }
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
            Ok(b) => b,
            Err(_) => {
                return finish(
                    (StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response(),
                    &ctx,
                    false,
                    app.config.secure_cookies,
                );
            }
        };
        let token = url::form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == CSRF_FIELD)
            .map(|(_, v)| v.into_owned());
        let ok = token.is_some_and(|t| bool::from(t.as_bytes().ct_eq(ctx.csrf.as_bytes())));
        if !ok {
            return finish(
                forbidden("The form's security token (CSRF) is missing or wrong."),
                &ctx,
                false,
                app.config.secure_cookies,
            );
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    request.extensions_mut().insert(ctx.clone());
    let response = next.run(request).await;
    finish(response, &ctx, created, app.config.secure_cookies)
}

fn finish(mut response: Response, ctx: &SessionCtx, created: bool, secure: bool) -> Response {
    let headers = response.headers_mut();
    if created && let Ok(v) = HeaderValue::from_str(&session_cookie(&ctx.id, secure)) {
        headers.append(header::SET_COOKIE, v);
    }
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: with it browsers send `Origin: null` on form
        // posts, which the origin check above refuses. `same-origin` still
        // keeps the URL from the provider's consent page.
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
