//! The limit for `scripts/bench`: the least a client can do to read every
//! message of an INBOX over IMAP, so the sync engine's time can be put in
//! proportion to the server's.
//!
//! TLS (tokio-rustls, ring, the stack's CA), `LOGIN` with the account's
//! password from the stack's `stack.json`, `EXAMINE INBOX`,
//! `UID FETCH 1:* (BODY.PEEK[])`, then read and discard until the tagged OK
//! (literals are skipped by their announced length, so message text cannot
//! fake the end), `LOGOUT`. Nothing is parsed beyond that, nothing is
//! stored. Prints one JSON line: `{"messages":N,"bytes":B}`.
//!
//! ```sh
//! cargo run --release -p mailsync --example bench_limit -- \
//!     tests/stack/run/stack.json sync19@example.test
//! ```

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Stream = tokio_rustls::client::TlsStream<TcpStream>;
type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Reads IMAP responses, skipping literals by length.
struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of a literal still to skip.
    literal: u64,
    /// The next line begins a response (not the rest of one after a literal).
    at_start: bool,
    line: Vec<u8>,
    messages: u64,
    bytes: u64,
}

impl Reader {
    fn new() -> Self {
        Reader {
            buf: vec![0; 256 * 1024],
            start: 0,
            end: 0,
            literal: 0,
            at_start: true,
            line: Vec::new(),
            messages: 0,
            bytes: 0,
        }
    }

    /// Reads until the tagged response for `tag`; returns its line.
    async fn until_tagged(&mut self, s: &mut Stream, tag: &str) -> Result<String, Failure> {
        loop {
            if self.start == self.end {
                let n = s.read(&mut self.buf).await?;
                if n == 0 {
                    return Err("connection closed".into());
                }
                self.start = 0;
                self.end = n;
            }
            if self.literal > 0 {
                let take = (self.literal as usize).min(self.end - self.start);
                self.start += take;
                self.literal -= take as u64;
                continue;
            }
            let chunk = &self.buf[self.start..self.end];
            match chunk.iter().position(|&b| b == b'\n') {
                None => {
                    self.line.extend_from_slice(chunk);
                    self.start = self.end;
                }
                Some(i) => {
                    self.line.extend_from_slice(&chunk[..=i]);
                    self.start += i + 1;
                    let line = std::mem::take(&mut self.line);
                    let first = self.at_start;
                    // `{N}\r\n` at the end announces a literal; the response goes on after it.
                    let body = line.strip_suffix(b"\r\n").unwrap_or(&line);
                    let literal = body
                        .strip_suffix(b"}")
                        .and_then(|b| b.iter().rposition(|&c| c == b'{').map(|p| &b[p + 1..]))
                        .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok());
                    if let Some(n) = literal {
                        self.literal = n;
                        self.bytes += n;
                        self.at_start = false;
                    } else {
                        self.at_start = true;
                    }
                    if first {
                        if body.starts_with(b"* ") && body.windows(7).any(|w| w == b" FETCH ") {
                            self.messages += 1;
                        }
                        if body.starts_with(tag.as_bytes()) && body.get(tag.len()) == Some(&b' ') {
                            return Ok(String::from_utf8_lossy(body).into_owned());
                        }
                    }
                }
            }
        }
    }
}

async fn command(s: &mut Stream, r: &mut Reader, tag: &str, text: &str) -> Result<String, Failure> {
    s.write_all(format!("{tag} {text}\r\n").as_bytes()).await?;
    s.flush().await?;
    let done = r.until_tagged(s, tag).await?;
    if !done[tag.len()..].trim_start().starts_with("OK") {
        let shown = if text.starts_with("LOGIN") {
            "LOGIN"
        } else {
            text
        };
        return Err(format!("{shown}: {done}").into());
    }
    Ok(done)
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

async fn run(stack_json: &str, email: &str) -> Result<(), Failure> {
    let stack: serde_json::Value = serde_json::from_slice(&std::fs::read(stack_json)?)?;
    let host = stack["imap"]["host"]
        .as_str()
        .ok_or("imap.host")?
        .to_owned();
    let port = stack["imap"]["tls_port"].as_u64().ok_or("imap.tls_port")? as u16;
    let ca = std::fs::read(stack["ca_cert"].as_str().ok_or("ca_cert")?)?;
    let password = stack["accounts"]
        .as_array()
        .ok_or("accounts")?
        .iter()
        .find(|a| a["email"].as_str() == Some(email))
        .and_then(|a| a["password"].as_str())
        .ok_or("no such account in stack.json")?
        .to_owned();

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let mut r = Reader::new();
    // The greeting is untagged: read one line.
    r.until_tagged(&mut s, "*").await?;
    command(
        &mut s,
        &mut r,
        "a1",
        &format!("LOGIN {} {}", quote(email), quote(&password)),
    )
    .await?;
    command(&mut s, &mut r, "a2", "EXAMINE INBOX").await?;
    r.messages = 0;
    r.bytes = 0;
    command(&mut s, &mut r, "a3", "UID FETCH 1:* (BODY.PEEK[])").await?;
    let (messages, bytes) = (r.messages, r.bytes);
    command(&mut s, &mut r, "a4", "LOGOUT").await?;
    println!("{{\"messages\":{messages},\"bytes\":{bytes}}}");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [stack_json, email] = args.as_slice() else {
        eprintln!("usage: bench_limit STACK_JSON EMAIL");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(stack_json, email)) {
        eprintln!("bench_limit: {e}");
        std::process::exit(1);
    }
}
