//! Sends N messages of a given size over one authenticated SMTP connection
//! (the engine's transport: our STARTTLS, XOAUTH2 or PLAIN, one
//! `MAIL`/`RCPT`/`DATA` transaction per message) and prints messages per
//! second, for comparing with other clients (e.g. Python's smtplib).
//!
//! ```sh
//! MAILSYNC_BENCH_TOKEN=<access token> cargo run --release -p mailsync --example send_bench -- \
//!     --host 127.0.0.1 --port 587 --security starttls --ca tests/stack/run/tls/ca.pem \
//!     --user alice@example.test --to bob@example.test --count 200 --size 10240
//! ```
//!
//! The secret comes from the environment, never the command line:
//! `MAILSYNC_BENCH_TOKEN` (XOAUTH2) or `MAILSYNC_BENCH_PASSWORD` (PLAIN).
//! The last line printed is `messages_per_second=<n>`.

use std::time::{Duration, Instant};

use mailsync::model::{Endpoint, Secret, Security};
use mailsync::net::smtp::{SmtpClient, Transaction};
use mailsync::net::{ConnectOptions, Credentials, Steps, TlsSettings};

struct Args {
    host: String,
    port: u16,
    security: Security,
    ca: Option<String>,
    user: String,
    to: String,
    count: usize,
    size: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: send_bench --host H --port P [--security starttls|tls|plaintext] [--ca PEM] \
         --user FROM --to TO [--count N] [--size BYTES]\n\
         secret: MAILSYNC_BENCH_TOKEN (XOAUTH2) or MAILSYNC_BENCH_PASSWORD (PLAIN)"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        host: String::new(),
        port: 0,
        security: Security::StartTls,
        ca: None,
        user: String::new(),
        to: String::new(),
        count: 100,
        size: 10 * 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--host" => a.host = value(),
            "--port" => a.port = value().parse().unwrap_or_else(|_| usage()),
            "--security" => {
                a.security = match value().as_str() {
                    "starttls" => Security::StartTls,
                    "tls" => Security::Tls,
                    "plaintext" => Security::Plaintext,
                    _ => usage(),
                }
            }
            "--ca" => a.ca = Some(value()),
            "--user" => a.user = value(),
            "--to" => a.to = value(),
            "--count" => a.count = value().parse().unwrap_or_else(|_| usage()),
            "--size" => a.size = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if a.host.is_empty() || a.port == 0 || a.user.is_empty() || a.to.is_empty() {
        usage();
    }
    a
}

/// A message of about `size` bytes: headers, then lines of 76 characters.
fn message(from: &str, to: &str, n: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: send_bench {n}\r\nMessage-ID: <bench.{n}.{}@{}>\r\n\r\n",
        std::process::id(),
        from.rsplit_once('@').map_or("localhost", |(_, d)| d)
    )
    .into_bytes();
    let line = [b'x'; 76];
    while m.len() + 78 <= size {
        m.extend_from_slice(&line);
        m.extend_from_slice(b"\r\n");
    }
    m
}

fn main() {
    let a = args();
    let creds = match (
        std::env::var("MAILSYNC_BENCH_TOKEN"),
        std::env::var("MAILSYNC_BENCH_PASSWORD"),
    ) {
        (Ok(token), _) => Credentials::OAuth {
            user: a.user.clone(),
            access_token: Secret::new(token),
        },
        (_, Ok(password)) => Credentials::Password {
            user: a.user.clone(),
            password: Secret::new(password),
        },
        _ => usage(),
    };
    let mut tls = TlsSettings::webpki();
    if let Some(ca) = &a.ca {
        tls = tls.with_root_pem_file(ca).unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
    }
    let opts = ConnectOptions::new(Duration::from_secs(30), tls);
    let endpoint = Endpoint::new(&a.host, a.port, a.security);
    let from: lettre::Address = a.user.parse().unwrap_or_else(|_| usage());
    let to: lettre::Address = a.to.parse().unwrap_or_else(|_| usage());
    let messages: Vec<Vec<u8>> = (0..a.count)
        .map(|n| message(&a.user, &a.to, n, a.size))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut steps = Steps::new("SMTP", opts.timeout);
        let connected = Instant::now();
        let mut client = SmtpClient::connect(&endpoint, &opts, &creds, None, &mut steps)
            .await
            .unwrap_or_else(|e| {
                eprintln!("connect: {e}");
                std::process::exit(1)
            });
        let setup = connected.elapsed();
        let started = Instant::now();
        for (n, data) in messages.iter().enumerate() {
            match client
                .transaction(&from, std::slice::from_ref(&to), data, false, opts.timeout)
                .await
            {
                Transaction::Accepted { .. } => {}
                other => {
                    eprintln!("message {n}: {other:?}");
                    std::process::exit(1)
                }
            }
        }
        let elapsed = started.elapsed();
        client.quit().await;
        let rate = a.count as f64 / elapsed.as_secs_f64();
        println!(
            "sent {} messages of {} bytes over one connection in {:.3} s (connect and authenticate: {:.3} s)",
            a.count,
            messages.first().map_or(0, Vec::len),
            elapsed.as_secs_f64(),
            setup.as_secs_f64()
        );
        println!("messages_per_second={rate:.1}");
    });
}
