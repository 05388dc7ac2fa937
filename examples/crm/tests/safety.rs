//! The CRM's safety rules, through its real router (no network, no stack):
//! provider-supplied text is HTML-escaped on every page, every POST needs
//! the session's CSRF token, and the session cookie is HttpOnly and
//! SameSite=Lax (Secure over https). Plus the sink: idempotent by key, and
//! the CRM's mail is its tracked email.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use mailsync::lifecycle::{Direction, LifecycleEvent};
use mailsync::model::{MailboxId, MailboxSpec, OAuthApp, ServerProfile};
use mailsync::sync::{DeliveryOutcome, IncomingMessage, MailAddress, MessageSink, RawMessage};
use mailsync::{EngineOptions, ErrorCode, Options};
use mailsync_crm::sink::CrmSink;
use mailsync_crm::{App, Config};
use tower::ServiceExt;

const PAYLOAD: &str = "<script>alert(1)</script>";

struct Env {
    app: App,
    router: Router,
    _dir: tempfile::TempDir,
}

async fn env(base_url: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let app = App::open(
        dir.path(),
        Config::new(base_url),
        Options::default(),
        EngineOptions::default(),
    )
    .await
    .unwrap();
    let router = app.router();
    Env {
        app,
        router,
        _dir: dir,
    }
}

struct Page {
    status: StatusCode,
    body: String,
    set_cookie: Vec<String>,
    location: Option<String>,
}

async fn send(router: &Router, request: Request<Body>) -> Page {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let set_cookie = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let location = response
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 10 << 20)
        .await
        .unwrap();
    Page {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        set_cookie,
        location,
    }
}

async fn get(router: &Router, path: &str, cookie: Option<&str>) -> Page {
    let mut request = Request::get(path).header(header::HOST, "127.0.0.1:9");
    if let Some(c) = cookie {
        request = request.header(header::COOKIE, c);
    }
    send(router, request.body(Body::empty()).unwrap()).await
}

async fn post(
    router: &Router,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    form: &str,
) -> Page {
    let mut request = Request::post(path)
        .header(header::HOST, "127.0.0.1:9")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        request = request.header(header::COOKIE, c);
    }
    if let Some(o) = origin {
        request = request.header(header::ORIGIN, o);
    }
    send(router, request.body(Body::from(form.to_owned())).unwrap()).await
}

fn session_cookie(page: &Page) -> &str {
    page.set_cookie
        .iter()
        .find(|c| c.starts_with("crm_session="))
        .expect("a session cookie")
}

/// A browser session: its cookie (`name=value`) and the CSRF token of its forms.
async fn session(router: &Router) -> (String, String) {
    let page = get(router, "/", None).await;
    assert_eq!(page.status, StatusCode::OK);
    let cookie = session_cookie(&page).split(';').next().unwrap().to_owned();
    let marker = "name=\"csrf\" value=\"";
    let start = page.body.find(marker).expect("a CSRF field") + marker.len();
    let token = page.body[start..].split('"').next().unwrap().to_owned();
    assert!(token.len() >= 40, "a random token: {token}");
    (cookie, token)
}

/// The payload as it must appear on a page: escaped, never as markup.
fn assert_escaped(body: &str, before: &str) {
    let at = body
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} is on the page: {body}"));
    let rest = &body[at + before.len()..];
    // askama writes `<` and `>` as numeric references; named ones are as good.
    let escaped = [
        "&lt;script&gt;alert(1)&lt;",
        "&#60;script&#62;alert(1)&#60;",
    ];
    assert!(
        escaped.iter().any(|e| rest.starts_with(e)),
        "escaped after {before:?}: {}",
        &rest[..rest.len().min(80)]
    );
    assert!(!body.contains(PAYLOAD), "no raw markup: {body}");
    assert!(!body.contains("<script"), "no script element at all");
}

#[tokio::test]
async fn provider_text_in_alerts_and_names_is_escaped() {
    let env = env("http://127.0.0.1:9").await;
    let sync = &env.app.state.sync;
    // A profile whose name is markup, and a mailbox on it.
    let app = OAuthApp::google("1234-abc.apps.googleusercontent.com", "secret")
        .for_environment("https://contoso.crm.example.com")
        .unwrap();
    sync.directory()
        .create_profile(
            ServerProfile::gmail(format!("Sales {PAYLOAD}"), app).default_for_new_mailboxes(),
        )
        .await
        .unwrap();
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user("alice@example.test"))
        .await
        .unwrap();
    // A Test & Enable failure whose reason carries the server's text.
    sync.apply_events(
        &mailbox.id,
        &[LifecycleEvent::TestFailed {
            direction: Direction::Incoming,
            code: ErrorCode::AuthRejected,
            reason: format!("server said: {PAYLOAD}"),
        }],
    )
    .await
    .unwrap();
    let alerts = sync.directory().alerts(&mailbox.id).await.unwrap();
    assert!(
        alerts.iter().any(|a| a.message.contains(PAYLOAD)),
        "the alert holds the raw text: {alerts:?}"
    );

    let (cookie, _) = session(&env.router).await;
    let path = format!("/mailboxes/{}", mailbox.id.as_str());
    let page = get(&env.router, &path, Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("auth_rejected"), "{}", page.body);
    assert_escaped(&page.body, "server said: ");

    for path in ["/", "/admin"] {
        let page = get(&env.router, path, Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert_escaped(&page.body, "Sales ");
    }

    // A callback carrying markup (an unknown state) ends on an escaped page.
    let page = get(
        &env.router,
        "/_grid/cmds/dlg_gmailoauth.aspx?error=%3Cscript%3Ealert(1)%3C%2Fscript%3E&state=nope",
        Some(&cookie),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("state_invalid"), "{}", page.body);
    assert!(!page.body.contains("<script"), "{}", page.body);
    env.app.close().await;
}

#[tokio::test]
async fn a_post_without_the_csrf_token_is_refused() {
    let env = env("http://127.0.0.1:9").await;
    let (cookie, token) = session(&env.router).await;
    let form = "email=bob%40example.test&profile=&incoming_filter=all";
    let count = || async {
        env.app
            .state
            .sync
            .directory()
            .list_mailboxes(None)
            .await
            .unwrap()
            .len()
    };

    // No token, a wrong token, the right token without the session cookie,
    // the right token from another origin: all refused, nothing created.
    let wrong = format!("{form}&csrf=AAAA{}", &token[4..]);
    let right = format!("{form}&csrf={token}");
    let refused = [
        post(&env.router, "/mailboxes", Some(&cookie), None, form).await,
        post(&env.router, "/mailboxes", Some(&cookie), None, &wrong).await,
        post(&env.router, "/mailboxes", None, None, &right).await,
        post(
            &env.router,
            "/mailboxes",
            Some(&cookie),
            Some("http://evil.example"),
            &right,
        )
        .await,
    ];
    for page in &refused {
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
        assert!(page.location.is_none());
    }
    assert!(refused[0].body.contains("CSRF"), "{}", refused[0].body);
    assert_eq!(count().await, 0, "nothing was created");

    // The same form with the session's token goes through.
    let page = post(
        &env.router,
        "/mailboxes",
        Some(&cookie),
        Some("http://127.0.0.1:9"),
        &right,
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert!(page.location.unwrap().starts_with("/mailboxes/"));
    assert_eq!(count().await, 1);
    env.app.close().await;
}

#[tokio::test]
async fn the_session_cookie_is_http_only_and_same_site_lax() {
    for (base, secure) in [
        ("http://127.0.0.1:9", false),
        ("https://crm.example.com", true),
    ] {
        let env = env(base).await;
        let page = get(&env.router, "/", None).await;
        let cookie = session_cookie(&page);
        assert!(cookie.contains("; HttpOnly"), "{cookie}");
        assert!(cookie.contains("; SameSite=Lax"), "{cookie}");
        assert!(cookie.contains("; Path=/"), "{cookie}");
        assert_eq!(cookie.contains("; Secure"), secure, "{base}: {cookie}");
        env.app.close().await;
    }
}

fn message(mailbox: &MailboxId, key: &str, message_id: &str) -> IncomingMessage {
    IncomingMessage {
        key: key.into(),
        mailbox_id: mailbox.clone(),
        uid: Some(7),
        uid_validity: Some(1),
        uidl: None,
        provider_id: None,
        thread_id: None,
        message_id: Some(message_id.into()),
        in_reply_to: Vec::new(),
        references: Vec::new(),
        from: vec![MailAddress {
            name: Some("Carol".into()),
            address: "carol@customer.example".into(),
        }],
        to: Vec::new(),
        cc: Vec::new(),
        subject: Some("Quote request".into()),
        date: None,
        received_at: None,
        size: 42,
        flags: Vec::new(),
        unparsed: false,
        raw: RawMessage(b"Subject: Quote request\r\n\r\nhello\r\n".to_vec()),
    }
}

#[tokio::test]
async fn the_sink_stores_by_key_once_and_tracks_what_it_holds() {
    let env = env("http://127.0.0.1:9").await;
    let sync = &env.app.state.sync;
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user("carol@example.test"))
        .await
        .unwrap();
    let sink = CrmSink::new(env.app.state.db.clone());
    let batch = vec![
        message(&mailbox.id, "mid:a@x#1", "a@x"),
        message(&mailbox.id, "mid:b@x#2", "b@x"),
    ];
    for _ in 0..2 {
        let outcomes = sink.deliver(batch.clone()).await.unwrap();
        assert_eq!(outcomes, vec![DeliveryOutcome::Stored; 2]);
    }
    assert_eq!(
        env.app.state.db.message_count(&mailbox.id).await.unwrap(),
        2
    );
    let tracked = sink
        .tracked(&mailbox.id, vec!["a@x".into(), "zzz@x".into()])
        .await
        .unwrap();
    assert_eq!(tracked, vec![true, false]);
    env.app.close().await;
}

/// The admin's forms as a browser posts them (same-origin `Origin`, every
/// field text): the client, then a profile with its numbers. A flattened
/// serde struct once refused every number of the profile form with a
/// plain-text 422, which only the browser test saw.
#[tokio::test]
async fn the_admin_forms_create_the_client_and_a_profile() {
    let env = env("http://127.0.0.1:9").await;
    let (cookie, token) = session(&env.router).await;
    let origin = Some("http://127.0.0.1:9");
    let client = format!(
        "csrf={token}&client_id=1234-abc.apps.googleusercontent.com&client_secret=GOCSPX-test\
         &environment_url=https%3A%2F%2Fcontoso.crm.example.com"
    );
    let page = post(&env.router, "/admin/client", Some(&cookie), origin, &client).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let profile = format!(
        "csrf={token}&name=Gmail+-+sales&default=1&protocol=imap&incoming_host=imap.gmail.com\
         &incoming_port=993&outgoing_host=smtp.gmail.com&outgoing_port=587&outgoing_security=starttls\
         &capacity=100&min_polling=0&max_connections=10&timeout=60&process_after="
    );
    let page = post(
        &env.router,
        "/admin/profiles",
        Some(&cookie),
        origin,
        &profile,
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let profiles = env
        .app
        .state
        .sync
        .directory()
        .list_profiles()
        .await
        .unwrap();
    assert_eq!(profiles.len(), 1, "{profiles:?}");
    assert_eq!(profiles[0].processing.min_polling_interval_minutes, 0);
    assert_eq!(profiles[0].mailbox_capacity, 100);
    assert!(profiles[0].default_for_new_mailboxes);
    let admin = get(&env.router, "/admin", Some(&cookie)).await;
    assert!(
        admin.body.contains("Profile Gmail - sales created."),
        "{}",
        admin.body
    );

    // A number that is not one: the app's own validation error on the page.
    let bad = profile
        .replace("capacity=100", "capacity=lots")
        .replace("Gmail+-+sales", "Gmail+-+two");
    let page = post(&env.router, "/admin/profiles", Some(&cookie), origin, &bad).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let admin = get(&env.router, "/admin", Some(&cookie)).await;
    assert!(admin.body.contains("mailbox_capacity"), "{}", admin.body);
    assert_eq!(
        env.app
            .state
            .sync
            .directory()
            .list_profiles()
            .await
            .unwrap()
            .len(),
        1
    );
    env.app.close().await;
}
