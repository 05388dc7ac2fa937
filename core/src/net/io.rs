//! The stream under every protocol (TCP, TLS, or TCP upgraded by STARTTLS)
//! and a bounded CRLF line reader for the line-based protocols.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, ErrorCode};

/// A connection to a mail server: plain TCP (before STARTTLS, or loopback
/// plaintext) or TLS (implicit, or after a STARTTLS/STLS upgrade).
#[derive(Debug)]
pub enum MailStream {
    /// Unencrypted TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<SniffedTcp>>),
}

/// How many of the server's first bytes [`SniffedTcp`] keeps.
pub(crate) const SNIFF_LEN: usize = 16;

/// A TCP stream that keeps the first bytes the server sent, so that a
/// failed TLS handshake can tell a plaintext greeting (`* OK`, `+OK`,
/// `220`) from a broken TLS server. After those bytes it only passes data
/// through.
#[derive(Debug)]
pub struct SniffedTcp {
    inner: TcpStream,
    first: [u8; SNIFF_LEN],
    len: usize,
}

impl SniffedTcp {
    pub(crate) fn new(inner: TcpStream) -> Self {
        SniffedTcp {
            inner,
            first: [0; SNIFF_LEN],
            len: 0,
        }
    }

    /// The first bytes received (at most [`SNIFF_LEN`]).
    pub(crate) fn first_bytes(&self) -> &[u8] {
        &self.first[..self.len]
    }

    /// The TCP stream.
    pub fn tcp(&self) -> &TcpStream {
        &self.inner
    }
}

impl AsyncRead for SniffedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.inner).poll_read(cx, buf);
        if me.len < SNIFF_LEN {
            let new = &buf.filled()[before..];
            let take = new.len().min(SNIFF_LEN - me.len);
            me.first[me.len..me.len + take].copy_from_slice(&new[..take]);
            me.len += take;
        }
        polled
    }
}

impl AsyncWrite for SniffedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether bytes look like the greeting of a plaintext mail protocol.
pub(crate) fn looks_like_plaintext_greeting(first: &[u8]) -> Option<&'static str> {
    if first.starts_with(b"* OK") || first.starts_with(b"* BYE") || first.starts_with(b"* PREAUTH")
    {
        Some("an IMAP greeting")
    } else if first.starts_with(b"+OK") || first.starts_with(b"-ERR") {
        Some("a POP3 greeting")
    } else if first.len() >= 4
        && first[..3].iter().all(u8::is_ascii_digit)
        && (first[3] == b' ' || first[3] == b'-')
    {
        Some("an SMTP greeting")
    } else {
        None
    }
}

impl MailStream {
    /// Whether the stream is encrypted.
    pub fn is_encrypted(&self) -> bool {
        matches!(self, MailStream::Tls(_))
    }
}

impl AsyncRead for MailStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MailStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A stream that puts secrets into what it writes: each registered
/// placeholder is replaced by its secret on the way to the socket.
///
/// async-imap logs every command it sends at TRACE through `log`, LOGIN and
/// AUTHENTICATE included. The IMAP client hands it random placeholders and
/// the secrets go in here, below that log. While a replacement is pending,
/// writes are held until the next flush (async-imap flushes after each
/// command); afterwards they pass straight through.
#[derive(Debug)]
pub struct SecretSwap<S> {
    inner: S,
    swaps: Vec<(String, zeroize::Zeroizing<String>)>,
    held: zeroize::Zeroizing<Vec<u8>>,
    sent: usize,
}

impl<S> SecretSwap<S> {
    /// Wraps `inner` with nothing to replace.
    pub fn new(inner: S) -> Self {
        SecretSwap {
            inner,
            swaps: Vec::new(),
            held: zeroize::Zeroizing::new(Vec::new()),
            sent: 0,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably.
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Replaces the next occurrence of `placeholder` with `secret`.
    pub(crate) fn swap(&mut self, placeholder: String, secret: zeroize::Zeroizing<String>) {
        self.swaps.push((placeholder, secret));
    }

    /// Forgets replacements that were never used.
    pub(crate) fn clear_swaps(&mut self) {
        self.swaps.clear();
    }

    /// A random placeholder (ASCII letters and digits only, so no quoting
    /// or encoding changes it).
    pub(crate) fn placeholder() -> Result<String, Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| {
            Error::new(ErrorCode::Internal, format!("no randomness available: {e}"))
        })?;
        Ok(bytes
            .iter()
            .fold(String::from("MAILSYNCSECRET"), |mut s, b| {
                s.push_str(&format!("{b:02x}"));
                s
            }))
    }

    fn substitute(&mut self) {
        let mut i = 0;
        while i < self.swaps.len() {
            let needle = self.swaps[i].0.as_bytes();
            let unsent = &self.held[self.sent..];
            match unsent.windows(needle.len()).position(|w| w == needle) {
                Some(offset) => {
                    let at = self.sent + offset;
                    let (placeholder, secret) = self.swaps.remove(i);
                    let mut next =
                        zeroize::Zeroizing::new(Vec::with_capacity(self.held.len() + secret.len()));
                    next.extend_from_slice(&self.held[..at]);
                    next.extend_from_slice(secret.as_bytes());
                    next.extend_from_slice(&self.held[at + placeholder.len()..]);
                    self.held = next;
                }
                None => i += 1,
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SecretSwap<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SecretSwap<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.swaps.is_empty() && this.held.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.held.is_empty() {
            this.substitute();
            while this.sent < this.held.len() {
                let n = std::task::ready!(
                    Pin::new(&mut this.inner).poll_write(cx, &this.held[this.sent..])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                this.sent += n;
            }
            this.held = zeroize::Zeroizing::new(Vec::new());
            this.sent = 0;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A limit a server broke: the read fails with this inside an
/// [`io::Error`] of kind `InvalidData`, and the protocol reports it as a
/// `protocol_error` (see [`limit_exceeded`]).
#[derive(Debug)]
pub(crate) struct LimitExceeded(pub(crate) String);

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitExceeded {}

/// The broken limit inside an I/O error, if that is what it is.
pub(crate) fn limit_exceeded(e: &io::Error) -> Option<&LimitExceeded> {
    e.get_ref()?.downcast_ref::<LimitExceeded>()
}

/// Where [`ImapReadGuard`] is in the server's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Ordinary line text.
    Text,
    /// After `{`, with the digits so far.
    Brace(Option<u64>),
    /// After `{n}`.
    Closed(u64),
    /// After `{n}\r`.
    ClosedCr(u64),
    /// Inside a literal: this many bytes remain.
    Literal(u64),
}

/// Sits under async-imap and enforces what it does not: a line (outside
/// literals) of at most `max_line` bytes, and a literal of at most
/// `max_literal` bytes, refused when it is announced (`{n}\r\n`), before
/// async-imap reserves a buffer of that size (it would, up to 512 MiB).
///
/// Text is handed on only in whole lines, so async-imap parses each line
/// once rather than again after every read (quadratic on long lines);
/// literal data is handed on as it arrives. The guard itself holds at most
/// one line.
#[derive(Debug)]
pub struct ImapReadGuard<S> {
    inner: S,
    /// Bytes read and not yet handed on.
    buf: Vec<u8>,
    /// `buf[..ready]` may be handed on (whole lines, literal data).
    ready: usize,
    /// `buf[..scanned]` went through the scanner.
    scanned: usize,
    state: Scan,
    /// Bytes of the current line (or of its part after the last literal).
    line: usize,
    max_line: usize,
    max_literal: u64,
    eof: bool,
    failed: Option<String>,
}

impl<S> ImapReadGuard<S> {
    /// Wraps `inner` with the limits.
    pub(crate) fn new(inner: S, max_line: usize, max_literal: u64) -> Self {
        ImapReadGuard {
            inner,
            buf: Vec::new(),
            ready: 0,
            scanned: 0,
            state: Scan::Text,
            line: 0,
            max_line,
            max_literal,
            eof: false,
            failed: None,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Changes the largest literal accepted from now on.
    pub(crate) fn set_max_literal(&mut self, max: u64) {
        self.max_literal = max;
    }

    /// Runs the scanner over the bytes not scanned yet; moves `ready` to
    /// the end of the last whole line or literal data.
    fn scan(&mut self) -> Result<(), String> {
        let mut i = self.scanned;
        while i < self.buf.len() {
            if let Scan::Literal(remaining) = self.state {
                let take = remaining.min((self.buf.len() - i) as u64);
                i += take as usize;
                self.ready = i;
                let left = remaining - take;
                self.state = if left == 0 {
                    Scan::Text
                } else {
                    Scan::Literal(left)
                };
                self.line = 0;
                continue;
            }
            let b = self.buf[i];
            i += 1;
            if b == b'\n' {
                self.ready = i;
                self.line = 0;
                self.state = match self.state {
                    Scan::ClosedCr(n) if n > self.max_literal => {
                        return Err(format!(
                            "the IMAP server announced a literal of {n} bytes, above the limit of {} bytes",
                            self.max_literal
                        ));
                    }
                    Scan::ClosedCr(0) => Scan::Text,
                    Scan::ClosedCr(n) => Scan::Literal(n),
                    _ => Scan::Text,
                };
                continue;
            }
            self.line += 1;
            if self.line > self.max_line {
                return Err(format!(
                    "the IMAP server sent a line longer than {} bytes",
                    self.max_line
                ));
            }
            self.state = match (self.state, b) {
                (_, b'{') => Scan::Brace(None),
                (Scan::Brace(n), b'0'..=b'9') => Scan::Brace(Some(
                    n.unwrap_or(0)
                        .saturating_mul(10)
                        .saturating_add(u64::from(b - b'0')),
                )),
                (Scan::Brace(Some(n)), b'}') => Scan::Closed(n),
                (Scan::Closed(n), b'\r') => Scan::ClosedCr(n),
                _ => Scan::Text,
            };
        }
        self.scanned = i;
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ImapReadGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(why) = &this.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    LimitExceeded(why.clone()),
                )));
            }
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.drain(..n);
                this.ready -= n;
                this.scanned -= n;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What is left is an unfinished line: async-imap reports it.
                this.ready = this.buf.len();
                this.scanned = this.buf.len();
                if this.ready == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.buf.extend_from_slice(read.filled());
            if let Err(why) = this.scan() {
                this.buf = Vec::new();
                this.ready = 0;
                this.scanned = 0;
                this.failed = Some(why);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ImapReadGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Why a line could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection.
    Eof,
    /// A line exceeded the limit.
    TooLong(usize),
    /// I/O failure.
    Io(io::Error),
}

impl ReadError {
    pub(crate) fn into_error(self, protocol: &str) -> Error {
        match self {
            ReadError::Eof => Error::new(
                ErrorCode::Network,
                format!("the {protocol} server closed the connection"),
            ),
            ReadError::TooLong(max) => Error::new(
                ErrorCode::ProtocolError,
                format!("the {protocol} server sent a line longer than {max} bytes"),
            ),
            ReadError::Io(e) => super::io_error(protocol, &e),
        }
    }
}

/// A buffered reader of CRLF-terminated lines with a maximum line length.
#[derive(Debug)]
pub(crate) struct LineStream<S> {
    inner: S,
    buf: Vec<u8>,
    pos: usize,
    max_line: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineStream<S> {
    pub(crate) fn new(inner: S, max_line: usize) -> Self {
        LineStream {
            inner,
            buf: Vec::with_capacity(8192),
            pos: 0,
            max_line,
        }
    }

    /// Bytes received but not yet consumed.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    pub(crate) fn into_inner(self) -> S {
        self.inner
    }

    /// Reads one line, without its line ending (CRLF, or a bare LF).
    pub(crate) async fn read_line(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut scanned = 0;
        loop {
            let avail = &self.buf[self.pos..];
            if let Some(i) = avail[scanned..].iter().position(|b| *b == b'\n') {
                let end = scanned + i;
                let mut line = avail[..end].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.pos += end + 1;
                if line.len() > self.max_line {
                    return Err(ReadError::TooLong(self.max_line));
                }
                return Ok(line);
            }
            scanned = avail.len();
            if scanned > self.max_line + 1 {
                return Err(ReadError::TooLong(self.max_line));
            }
            // Compact, then read more.
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            self.buf.reserve(8192);
            let n = self
                .inner
                .read_buf(&mut self.buf)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                return Err(ReadError::Eof);
            }
        }
    }

    /// Writes and flushes.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes).await?;
        self.inner.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_split_across_reads() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut ls = LineStream::new(client, 100);
        let w = tokio::spawn(async move {
            for part in [&b"+OK hel"[..], b"lo\r", b"\nsecond\n", b"third\r\n"] {
                server.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
            server
        });
        assert_eq!(ls.read_line().await.unwrap(), b"+OK hello");
        assert_eq!(ls.read_line().await.unwrap(), b"second");
        assert_eq!(ls.read_line().await.unwrap(), b"third");
        drop(w.await.unwrap());
        assert!(matches!(ls.read_line().await, Err(ReadError::Eof)));
    }

    /// Reads everything the guard hands on, seven bytes at a time.
    async fn through_guard(
        parts: &[&[u8]],
        max_line: usize,
        max_literal: u64,
    ) -> (Vec<u8>, Option<io::Error>) {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let w = tokio::spawn(async move {
            for part in parts {
                server.write_all(&part).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut guard = ImapReadGuard::new(client, max_line, max_literal);
        let mut out = Vec::new();
        let mut chunk = [0u8; 7];
        loop {
            match guard.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) => return (out, Some(e)),
            }
        }
        w.await.unwrap();
        (out, None)
    }

    #[tokio::test]
    async fn imap_guard_passes_lines_and_literals_through() {
        // The literal's data looks like a huge announcement: it is data.
        let data: &[&[u8]] = &[
            b"* OK ready\r\n* 1 FETCH (BODY[] {1",
            b"9}\r\n{99999999999}\r\nab)\r\n",
            b"a1 OK done\r\n* OK {0}\r\n\r\nlast",
        ];
        let (out, err) = through_guard(data, 64, 100).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(out, data.concat());
    }

    #[tokio::test]
    async fn imap_guard_refuses_big_literals_and_long_lines() {
        let (out, err) =
            through_guard(&[b"* OK hi\r\n* 1 FETCH (BODY[] {10", b"1}\r\nxx"], 64, 100).await;
        let err = err.expect("refused");
        assert_eq!(
            limit_exceeded(&err).unwrap().to_string(),
            "the IMAP server announced a literal of 101 bytes, above the limit of 100 bytes"
        );
        assert_eq!(out, b"* OK hi\r\n", "the announcement is not handed on");
        let (_, err) =
            through_guard(&[b"* OK {4294967295}\r\n"], 64, u64::from(u32::MAX) - 1).await;
        assert!(limit_exceeded(&err.unwrap()).is_some());
        // A line over the limit, also in pieces and without an end.
        let (out, err) = through_guard(&[b"* OK ", &[b'a'; 40], &[b'a'; 40]], 64, 100).await;
        assert!(out.is_empty(), "a partial line is held back");
        let err = err.expect("refused");
        assert!(
            limit_exceeded(&err).unwrap().0.contains("longer than 64"),
            "{err}"
        );
        // Text after a literal starts a new count.
        let (_, err) = through_guard(
            &[b"* 1 FETCH (BODY[] {80}\r\n", &[b'x'; 80], b")\r\n"],
            64,
            100,
        )
        .await;
        assert!(err.is_none(), "{err:?}");
    }

    #[tokio::test]
    async fn oversize_line_is_refused() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut ls = LineStream::new(client, 16);
        server.write_all(&[b'a'; 100]).await.unwrap();
        assert!(matches!(ls.read_line().await, Err(ReadError::TooLong(16))));
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut ls = LineStream::new(client, 16);
        server.write_all(b"0123456789abcdefXYZ\r\n").await.unwrap();
        assert!(matches!(ls.read_line().await, Err(ReadError::TooLong(16))));
        let e = ReadError::TooLong(16).into_error("POP3");
        assert_eq!(e.code(), ErrorCode::ProtocolError);
    }
}
