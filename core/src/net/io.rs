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
    Tls(Box<TlsStream<TcpStream>>),
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
