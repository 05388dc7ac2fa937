//! Inputs the fuzz targets (fuzz/, docs/security.md) found crashing, kept
//! as regression tests through the public entry points: a scripted server
//! on loopback plays the input and the client must end with a typed error.

use std::time::Duration;

use mailsync::ErrorCode;
use mailsync::model::{Endpoint, Secret, Security};
use mailsync::net::{ConnectOptions, Credentials, Steps, TlsSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback server that writes `script`, closes its sending side and
/// reads until the client hangs up.
async fn scripted(script: &'static [u8]) -> Endpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let _ = conn.write_all(script).await;
        let _ = conn.shutdown().await;
        let mut sink = [0u8; 1024];
        while let Ok(n) = conn.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    });
    Endpoint::new("127.0.0.1", port, Security::Plaintext)
}

fn options() -> ConnectOptions {
    ConnectOptions::new(Duration::from_secs(5), TlsSettings::webpki())
        .with_plaintext_on_loopback(true)
}

fn token() -> Credentials {
    Credentials::OAuth {
        user: "user@example.com".into(),
        access_token: Secret::new("ya29.token"),
    }
}

/// imap_session, crash 1: a greeting whose response code is followed by
/// bytes that are not UTF-8 (`* OK [CAPABILITY …]\xff\xff…`). imap-proto
/// 0.17 panics slicing the text; the client turns it into `protocol_error`.
#[tokio::test]
async fn imap_response_code_followed_by_non_utf8_text_is_a_protocol_error() {
    let endpoint =
        scripted(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2]\xff\xff\xff\xffdy\r\n").await;
    let mut steps = Steps::new("IMAP", Duration::from_secs(5));
    let e =
        mailsync::net::imap::ImapClient::connect(&endpoint, &options(), &token(), None, &mut steps)
            .await
            .unwrap_err();
    assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{e}");
    assert_eq!(e.step, mailsync::net::Step::Greeting);
}

/// The same answer later in the session (to EXAMINE): the session ends
/// with `protocol_error` and is not used again.
#[tokio::test]
async fn imap_unparsable_answer_mid_session_is_a_protocol_error() {
    let endpoint = scripted(
        b"* OK ready\r\n\
          * CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR\r\nms1 OK done\r\n\
          A0001 OK authenticated\r\n\
          * CAPABILITY IMAP4rev1\r\nA0002 OK done\r\n\
          * OK [UIDVALIDITY 1]\xe2\x82\r\nA0003 OK [READ-ONLY] done\r\n",
    )
    .await;
    let mut steps = Steps::new("IMAP", Duration::from_secs(5));
    let mut client =
        mailsync::net::imap::ImapClient::connect(&endpoint, &options(), &token(), None, &mut steps)
            .await
            .unwrap();
    let e = client.examine_inbox().await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::ProtocolError, "{e}");
    assert!(client.is_broken());
}

/// smtp_session, crash 1: an EHLO answer with a line of only spaces
/// (`250   `). lettre 0.11 panics (`split_whitespace().next().unwrap()`);
/// the client turns it into `protocol_error`.
#[tokio::test]
async fn smtp_ehlo_line_of_spaces_is_a_protocol_error() {
    let endpoint =
        scripted(b"220 x ESMTP\r\n250-mail.example\r\n250-AUTH XOAUTH2\r\n250   \r\n").await;
    let mut steps = Steps::new("SMTP", Duration::from_secs(5));
    let e =
        mailsync::net::smtp::SmtpClient::connect(&endpoint, &options(), &token(), None, &mut steps)
            .await
            .unwrap_err();
    assert_eq!(e.error.code(), ErrorCode::ProtocolError, "{e}");
}
