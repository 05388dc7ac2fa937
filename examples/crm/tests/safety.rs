//! The CRM's safety rules, through its real router (no network, no stack):
//! provider-supplied text is HTML-escaped on every page, every POST needs
//! the session's CSRF token, and the session cookie is HttpOnly and
//! SameSite=Lax (Secure over https). Plus the sink: idempotent by key, and
//! the CRM's mail is its tracked email; and the outbox: the compose form
//! queues (CSRF-protected, addresses checked), the engine's last error shows
//! escaped, reports end a message's pending life.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use mailsync::lifecycle::{Direction, LifecycleEvent};
use mailsync::model::{MailboxId, MailboxSpec, OAuthApp, ServerProfile};
use mailsync::store::LeaseKind;
use mailsync::sync::{
    DeliveryOutcome, IncomingMessage, MailAddress, MessageSink, Outbox, OutgoingContent,
    OutgoingRecord, OutgoingState, RawMessage, SendOutcome, SendReport,
};
use mailsync::{EngineOptions, ErrorCode, Options, Timestamp};
use mailsync_crm::outbox::CrmOutbox;
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

/// The compose form: refused without the session's token (nothing
/// queued), addresses checked, queued with it; the queued message shows in
/// the outbox as `queued` until the engine sees it.
#[tokio::test]
async fn the_compose_form_queues_only_with_the_csrf_token_and_good_addresses() {
    let env = env("http://127.0.0.1:9").await;
    let mailbox = env
        .app
        .state
        .sync
        .directory()
        .create_mailbox(MailboxSpec::user("alice@example.test"))
        .await
        .unwrap();
    let (cookie, token) = session(&env.router).await;
    let origin = Some("http://127.0.0.1:9");
    let path = format!("/mailboxes/{}/outbox", mailbox.id.as_str());
    let queued = || async { env.app.state.db.outbox(&mailbox.id, 10).await.unwrap() };
    let form = "to=carol%40customer.example&subject=Quote&body=Hello";

    for page in [
        post(&env.router, &path, Some(&cookie), origin, form).await,
        post(
            &env.router,
            &path,
            None,
            origin,
            &format!("{form}&csrf={token}"),
        )
        .await,
        post(
            &env.router,
            &path,
            Some(&cookie),
            Some("http://evil.example"),
            &format!("{form}&csrf={token}"),
        )
        .await,
    ] {
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    }
    assert!(queued().await.is_empty(), "nothing queued");

    // A recipient that is not an address: the validation error, nothing queued.
    let bad =
        format!("csrf={token}&to=carol%40customer.example%2C+%3Cscript%3E&subject=Quote&body=x");
    let page = post(&env.router, &path, Some(&cookie), origin, &bad).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = get(
        &env.router,
        &format!("/mailboxes/{}", mailbox.id.as_str()),
        Some(&cookie),
    )
    .await;
    assert!(page.body.contains("validation"), "{}", page.body);
    assert!(page.body.contains("not an email address"), "{}", page.body);
    assert!(!page.body.contains("<script"), "{}", page.body);
    assert!(queued().await.is_empty(), "nothing queued");

    let good = format!(
        "csrf={token}&to=carol%40customer.example%2C+dan%40customer.example&subject=Quote&body=Hello"
    );
    let page = post(&env.router, &path, Some(&cookie), origin, &good).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let list = queued().await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0].to,
        vec!["carol@customer.example", "dan@customer.example"]
    );
    assert_eq!(list[0].subject, "Quote");
    let page = get(
        &env.router,
        &format!("/mailboxes/{}", mailbox.id.as_str()),
        Some(&cookie),
    )
    .await;
    assert!(
        page.body.contains("Queued: from alice@example.test"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(&format!("id=\"outbox-{}\"", list[0].id)),
        "{}",
        page.body
    );
    assert!(page.body.contains(">queued</span>"), "{}", page.body);
    env.app.close().await;
}

/// What a mail server said about a message (its reply, a refused
/// recipient) shows escaped in the outbox, with the stable code.
#[tokio::test]
async fn the_outbox_shows_the_last_error_escaped() {
    let env = env("http://127.0.0.1:9").await;
    let sync = &env.app.state.sync;
    let mailbox = sync
        .directory()
        .create_mailbox(MailboxSpec::user("alice@example.test"))
        .await
        .unwrap();
    let id = env
        .app
        .state
        .db
        .queue_email(
            &mailbox.id,
            &["carol@customer.example".into()],
            "Quote",
            "Hello",
        )
        .await
        .unwrap();
    // The engine's record of it, as a refused send leaves it.
    let store = sync.store();
    let now = Timestamp::now_utc();
    let lease = store
        .acquire_lease(
            &mailbox.id,
            LeaseKind::Send,
            "safety test",
            now,
            now.plus(std::time::Duration::from_secs(60)),
        )
        .await
        .unwrap()
        .unwrap();
    let record = OutgoingRecord {
        mailbox_id: mailbox.id.clone(),
        id: id.clone(),
        message_id: "1@alice.example.test".into(),
        state: OutgoingState::Failed,
        attempts: 1,
        next_attempt: None,
        code: Some(ErrorCode::SendRejected),
        smtp_code: Some(554),
        reply: Some(format!("554 5.7.1 {PAYLOAD}")),
        refused: Vec::new(),
        created_at: now,
        updated_at: now,
        version: 0,
    };
    store
        .put_outgoing(&record, 0, &lease)
        .await
        .unwrap()
        .unwrap();
    store.release_lease(&lease).await.unwrap();

    let (cookie, _) = session(&env.router).await;
    let page = get(
        &env.router,
        &format!("/mailboxes/{}", mailbox.id.as_str()),
        Some(&cookie),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(">failed</span>"), "{}", page.body);
    assert!(page.body.contains("send_rejected"), "{}", page.body);
    assert!(
        page.body.contains("&lt;1@alice.example.test&gt;")
            || page.body.contains("&#60;1@alice.example.test&#62;"),
        "{}",
        page.body
    );
    assert_escaped(&page.body, "554 5.7.1 ");
    env.app.close().await;
}

/// The engine's side of the outbox: pending hands over the queued mail
/// composed from the mailbox's address; a `sent` or `failed` report ends
/// it, a `deferred` one keeps it; what was sent is tracked email.
#[tokio::test]
async fn the_outbox_hands_over_pending_mail_until_it_is_sent_or_failed() {
    let env = env("http://127.0.0.1:9").await;
    let mailbox = env
        .app
        .state
        .sync
        .directory()
        .create_mailbox(MailboxSpec::user("alice@example.test"))
        .await
        .unwrap();
    let db = &env.app.state.db;
    let mut ids = Vec::new();
    for subject in ["one", "two", "three"] {
        ids.push(
            db.queue_email(
                &mailbox.id,
                &["carol@customer.example".into()],
                subject,
                "text",
            )
            .await
            .unwrap(),
        );
    }
    let outbox = CrmOutbox::new(db.clone());
    let pending = outbox.pending(&mailbox.id, 10).await.unwrap();
    assert_eq!(
        pending.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        ids,
        "oldest first"
    );
    match &pending[0].content {
        OutgoingContent::Composed { message } => {
            assert_eq!(message.from, None, "the mailbox's own address");
            assert_eq!(message.to[0].address, "carol@customer.example");
            assert_eq!(message.subject, "one");
            assert_eq!(message.text.as_deref(), Some("text"));
        }
        other => panic!("composed, not {other:?}"),
    }
    let report = |id: &str, outcome: SendOutcome| SendReport {
        mailbox_id: mailbox.id.clone(),
        id: id.to_owned(),
        message_id: format!("{id}@alice.example.test"),
        attempts: 1,
        outcome,
    };
    outbox
        .report(report(
            &ids[0],
            SendOutcome::Sent {
                reply: "250 2.0.0 Ok".into(),
                refused: Vec::new(),
            },
        ))
        .await
        .unwrap();
    outbox
        .report(report(
            &ids[1],
            SendOutcome::Failed {
                code: ErrorCode::SendRejected,
                smtp_code: Some(554),
                reply: "554 no".into(),
                refused: Vec::new(),
            },
        ))
        .await
        .unwrap();
    outbox
        .report(report(
            &ids[2],
            SendOutcome::Deferred {
                code: ErrorCode::SendDeferred,
                smtp_code: Some(451),
                reply: "451 later".into(),
                next_attempt: Timestamp::now_utc(),
            },
        ))
        .await
        .unwrap();
    let pending = outbox.pending(&mailbox.id, 10).await.unwrap();
    assert_eq!(
        pending.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        vec![ids[2].clone()],
        "only the deferred one is still pending"
    );
    let sink = CrmSink::new(db.clone());
    let tracked = sink
        .tracked(
            &mailbox.id,
            vec![
                format!("{}@alice.example.test", ids[0]),
                format!("{}@alice.example.test", ids[1]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        tracked,
        vec![true, false],
        "sent mail is tracked, failed is not"
    );
    env.app.close().await;
}
