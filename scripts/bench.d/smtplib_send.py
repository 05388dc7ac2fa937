#!/usr/bin/env python3
"""Python's smtplib sending the same messages as core/examples/send_bench.rs:
N messages of SIZE bytes over one authenticated SMTP connection (STARTTLS or
TLS, AUTH PLAIN), one MAIL/RCPT/DATA transaction per message. The password
comes from MAILSYNC_BENCH_PASSWORD. The last line printed is
`messages_per_second=<n>`.

usage: smtplib_send.py --host H --port P [--security starttls|tls] [--ca PEM]
                       --user FROM --to TO [--count N] [--size BYTES]
"""
import argparse
import os
import smtplib
import ssl
import sys
import time


def message(sender, to, n, size):
    """Byte for byte what send_bench.rs builds."""
    domain = sender.rsplit("@", 1)[1] if "@" in sender else "localhost"
    m = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: send_bench {n}\r\n"
        f"Message-ID: <bench.{n}.{os.getpid()}@{domain}>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    parts = [m]
    length = len(m)
    while length + 78 <= size:
        parts.append(line)
        length += 78
    return b"".join(parts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--security", choices=["starttls", "tls"], default="starttls")
    p.add_argument("--ca")
    p.add_argument("--user", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--size", type=int, default=10 * 1024)
    a = p.parse_args()
    password = os.environ.get("MAILSYNC_BENCH_PASSWORD")
    if password is None:
        sys.exit("MAILSYNC_BENCH_PASSWORD is not set")
    context = ssl.create_default_context(cafile=a.ca)
    messages = [message(a.user, a.to, n, a.size) for n in range(a.count)]
    connected = time.perf_counter()
    if a.security == "tls":
        smtp = smtplib.SMTP_SSL(a.host, a.port, context=context, timeout=30)
    else:
        smtp = smtplib.SMTP(a.host, a.port, timeout=30)
        smtp.starttls(context=context)
    smtp.ehlo()
    smtp.login(a.user, password)
    setup = time.perf_counter() - connected
    started = time.perf_counter()
    for n, data in enumerate(messages):
        refused = smtp.sendmail(a.user, [a.to], data)
        if refused:
            sys.exit(f"message {n}: refused {refused}")
    elapsed = time.perf_counter() - started
    smtp.quit()
    print(
        f"sent {a.count} messages of {len(messages[0]) if messages else 0} bytes over one "
        f"connection in {elapsed:.3f} s (connect and authenticate: {setup:.3f} s)"
    )
    print(f"messages_per_second={a.count / elapsed:.1f}")


if __name__ == "__main__":
    main()
