//! Minimal raw IMAP / POP3 / SMTP client for the smoke tests: line I/O over TCP or TLS
//! (the stack CA is the only root), SASL XOAUTH2 / OAUTHBEARER with the failure exchange
//! completed as the protocols demand (empty line for XOAUTH2, 0x01 for OAUTHBEARER).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const IO_TIMEOUT: Duration = Duration::from_secs(15);

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A line-oriented connection.
pub struct Conn {
    io: BufReader<Box<dyn Io>>,
}

/// TCP connection to host:port, no TLS.
pub async fn connect_plain(host: &str, port: u16) -> Conn {
    let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .expect("connect timeout")
        .unwrap_or_else(|e| panic!("connect {host}:{port}: {e}"));
    Conn {
        io: BufReader::new(Box::new(tcp)),
    }
}

async fn tls_wrap(io: Box<dyn Io>, host: &str) -> Box<dyn Io> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("server name");
    let tls = tokio::time::timeout(IO_TIMEOUT, crate::tls_connector().connect(name, io))
        .await
        .expect("TLS handshake timeout")
        .expect("TLS handshake (certificate must verify against the stack CA)");
    Box::new(tls)
}

/// Implicit-TLS connection to host:port, verified against the stack CA only.
pub async fn connect_tls(host: &str, port: u16) -> Conn {
    let plain = connect_plain(host, port).await;
    let io = tls_wrap(plain.io.into_inner(), host).await;
    Conn {
        io: BufReader::new(io),
    }
}

impl Conn {
    /// Read one line (without CRLF).
    pub async fn line(&mut self) -> String {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(IO_TIMEOUT, self.io.read_until(b'\n', &mut buf))
            .await
            .expect("read timeout")
            .expect("read");
        assert!(n > 0, "connection closed by server");
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Read exactly `n` bytes (IMAP literals).
    pub async fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(IO_TIMEOUT, self.io.read_exact(&mut buf))
            .await
            .expect("read timeout")
            .expect("read");
        buf
    }

    /// Send `s` followed by CRLF.
    pub async fn send(&mut self, s: &str) {
        let w = self.io.get_mut();
        let fut = async {
            w.write_all(s.as_bytes()).await?;
            w.write_all(b"\r\n").await?;
            w.flush().await
        };
        tokio::time::timeout(IO_TIMEOUT, fut)
            .await
            .expect("write timeout")
            .expect("write");
    }

    /// Upgrade to TLS (after the server agreed to STARTTLS).
    pub async fn starttls(self, host: &str) -> Conn {
        assert!(
            self.io.buffer().is_empty(),
            "unexpected data before TLS handshake"
        );
        let io = tls_wrap(self.io.into_inner(), host).await;
        Conn {
            io: BufReader::new(io),
        }
    }
}

/// SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mech {
    XOAuth2,
    OAuthBearer,
}

impl Mech {
    pub fn name(self) -> &'static str {
        match self {
            Mech::XOAuth2 => "XOAUTH2",
            Mech::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// Base64 initial response.
    pub fn initial_response(self, user: &str, token: &str, host: &str, port: u16) -> String {
        let raw = match self {
            Mech::XOAuth2 => format!("user={user}\x01auth=Bearer {token}\x01\x01"),
            Mech::OAuthBearer => {
                format!("n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01")
            }
        };
        B64.encode(raw)
    }

    /// What the client must send after an error challenge so that the exchange ends.
    pub fn challenge_answer(self) -> &'static str {
        match self {
            Mech::XOAuth2 => "",
            Mech::OAuthBearer => "AQ==",
        }
    }
}

/// Outcome of one SASL exchange. Holds no secrets.
#[derive(Debug, Clone)]
pub struct AuthResult {
    pub ok: bool,
    /// The decoded JSON error challenge, if the server sent one.
    pub challenge: Option<serde_json::Value>,
    /// The server's final line (tagged IMAP answer, POP3 +OK/-ERR, SMTP reply).
    pub final_line: String,
}

fn decode_challenge(b64: &str) -> serde_json::Value {
    let raw = B64
        .decode(b64.trim())
        .unwrap_or_else(|e| panic!("challenge is not base64 ({e}): {b64}"));
    serde_json::from_slice(&raw).unwrap_or_else(|e| {
        panic!(
            "challenge is not JSON ({e}): {}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// Run the SASL exchange: `cmd` carries the initial response; `cont` is the continuation prefix
/// ("+ " or "334 "); `done` tells whether a line is the final answer.
async fn sasl(
    c: &mut Conn,
    mech: Mech,
    cmd: String,
    cont: &str,
    done: impl Fn(&str) -> bool,
    ok: impl Fn(&str) -> bool,
) -> AuthResult {
    c.send(&cmd).await;
    let mut challenge = None;
    loop {
        let l = c.line().await;
        if let Some(rest) = l.strip_prefix(cont) {
            assert!(
                challenge.is_none(),
                "second challenge after answering the first: {l}"
            );
            challenge = Some(decode_challenge(rest));
            c.send(mech.challenge_answer()).await;
            continue;
        }
        if done(&l) {
            return AuthResult {
                ok: ok(&l),
                challenge,
                final_line: l,
            };
        }
    }
}

/// IMAP: read the greeting of a fresh connection.
pub async fn imap_greeting(c: &mut Conn) -> String {
    let g = c.line().await;
    assert!(g.starts_with("* OK"), "IMAP greeting: {g}");
    g
}

/// IMAP `AUTHENTICATE` with SASL-IR.
pub async fn imap_auth(
    c: &mut Conn,
    mech: Mech,
    user: &str,
    token: &str,
    host: &str,
    port: u16,
) -> AuthResult {
    let ir = mech.initial_response(user, token, host, port);
    sasl(
        c,
        mech,
        format!("A1 AUTHENTICATE {} {ir}", mech.name()),
        "+ ",
        |l| l.starts_with("A1 "),
        |l| l.starts_with("A1 OK"),
    )
    .await
}

/// IMAP: run a command, return its untagged lines (literals inlined) and the tagged answer.
pub async fn imap_cmd(c: &mut Conn, tag: &str, cmd: &str) -> (Vec<String>, String) {
    c.send(&format!("{tag} {cmd}")).await;
    let mut lines = Vec::new();
    let prefix = format!("{tag} ");
    loop {
        let mut l = c.line().await;
        // inline literals: "... {123}" followed by 123 bytes and the rest of the line
        while let Some(n) = literal_len(&l) {
            let data = c.bytes(n).await;
            l.push('\n');
            l.push_str(&String::from_utf8_lossy(&data));
            l.push_str(&c.line().await);
        }
        if l.starts_with(&prefix) {
            return (lines, l);
        }
        lines.push(l);
    }
}

fn literal_len(l: &str) -> Option<usize> {
    let rest = l.strip_suffix('}')?;
    let open = rest.rfind('{')?;
    rest[open + 1..].trim_end_matches('+').parse().ok()
}

/// POP3: read the greeting.
pub async fn pop3_greeting(c: &mut Conn) -> String {
    let g = c.line().await;
    assert!(g.starts_with("+OK"), "POP3 greeting: {g}");
    g
}

/// POP3 `AUTH` with an initial response.
pub async fn pop3_auth(
    c: &mut Conn,
    mech: Mech,
    user: &str,
    token: &str,
    host: &str,
    port: u16,
) -> AuthResult {
    let ir = mech.initial_response(user, token, host, port);
    sasl(
        c,
        mech,
        format!("AUTH {} {ir}", mech.name()),
        "+ ",
        |l| l.starts_with("+OK") || l.starts_with("-ERR"),
        |l| l.starts_with("+OK"),
    )
    .await
}

/// SMTP: read a (multi-line) reply; returns (code, lines).
pub async fn smtp_reply(c: &mut Conn) -> (u16, Vec<String>) {
    let mut lines = Vec::new();
    loop {
        let l = c.line().await;
        let last = l.len() < 4 || l.as_bytes()[3] == b' ';
        lines.push(l);
        if last {
            let code = lines[0].get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return (code, lines);
        }
    }
}

/// SMTP: send a command and read the reply.
pub async fn smtp_cmd(c: &mut Conn, cmd: &str) -> (u16, Vec<String>) {
    c.send(cmd).await;
    smtp_reply(c).await
}

/// SMTP submission with STARTTLS: greeting, EHLO, STARTTLS, EHLO again. Ready for AUTH.
pub async fn smtp_starttls(host: &str, port: u16) -> Conn {
    let mut c = connect_plain(host, port).await;
    let (code, _) = smtp_reply(&mut c).await;
    assert_eq!(code, 220, "SMTP greeting");
    let (code, ehlo) = smtp_cmd(&mut c, "EHLO client.example.test").await;
    assert_eq!(code, 250);
    assert!(
        ehlo.iter().any(|l| l.contains("STARTTLS")),
        "no STARTTLS: {ehlo:?}"
    );
    assert!(
        !ehlo.iter().any(|l| l.contains("AUTH")),
        "AUTH offered before TLS: {ehlo:?}"
    );
    let (code, _) = smtp_cmd(&mut c, "STARTTLS").await;
    assert_eq!(code, 220, "STARTTLS refused");
    let mut c = c.starttls(host).await;
    let (code, ehlo) = smtp_cmd(&mut c, "EHLO client.example.test").await;
    assert_eq!(code, 250);
    assert!(
        ehlo.iter()
            .any(|l| l.contains("AUTH") && l.contains("XOAUTH2") && l.contains("OAUTHBEARER")),
        "AUTH XOAUTH2/OAUTHBEARER not offered: {ehlo:?}"
    );
    c
}

/// SMTP over implicit TLS ("465-style"): greeting and EHLO. Ready for AUTH.
pub async fn smtp_tls(host: &str, port: u16) -> Conn {
    let mut c = connect_tls(host, port).await;
    let (code, _) = smtp_reply(&mut c).await;
    assert_eq!(code, 220, "SMTP greeting");
    let (code, _) = smtp_cmd(&mut c, "EHLO client.example.test").await;
    assert_eq!(code, 250);
    c
}

/// SMTP `AUTH` with an initial response.
pub async fn smtp_auth(
    c: &mut Conn,
    mech: Mech,
    user: &str,
    token: &str,
    host: &str,
    port: u16,
) -> AuthResult {
    let ir = mech.initial_response(user, token, host, port);
    sasl(
        c,
        mech,
        format!("AUTH {} {ir}", mech.name()),
        "334 ",
        |l| l.len() >= 4 && !l.starts_with("334") && l.as_bytes()[3] == b' ',
        |l| l.starts_with("235"),
    )
    .await
}
