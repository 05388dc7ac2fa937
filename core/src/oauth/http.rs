//! The HTTP client the OAuth flows use: reqwest 0.13 on rustls with the
//! *ring* provider, redirects disabled (oauth2's SSRF advice), bounded
//! timeouts, trusting the bundled web PKI roots plus any extra PEM roots
//! (tests add their own CA; verification is never turned off).
//!
//! [`HttpClient::oauth2`] adapts it to the `oauth2` crate's async HTTP
//! interface (oauth2 5.0's own reqwest support
//! is reqwest 0.12 only). Server errors (5xx) and `429 Too Many Requests`
//! are returned as [`HttpError::Status`] so the caller can treat them as
//! transient.
//!
//! Every body read here (token, discovery, userinfo, revocation) is read
//! with a cap of [`MAX_BODY_BYTES`]: a longer answer (by its
//! `Content-Length`, or by what actually arrives) is dropped unread past
//! the cap and reported as [`HttpError::TooLarge`], which callers map to
//! `provider_error`. No decompression is enabled, so the cap is on the
//! bytes that arrive.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::{Error, ErrorCode, Result};

/// The most bytes read of one answer from an OAuth provider (1 MiB). Real
/// token, metadata, userinfo and revocation answers are a few KiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A transport-level failure (never contains request bodies or headers).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, TLS, timeout or I/O failed.
    #[error("{0}")]
    Transport(String),
    /// The server answered 5xx or 429 (overloaded or rate limiting).
    #[error("the server answered HTTP {0}")]
    Status(u16),
    /// The answer's body is longer than [`MAX_BODY_BYTES`].
    #[error("the answer is larger than {limit} bytes", limit = MAX_BODY_BYTES)]
    TooLarge,
}

impl HttpError {
    /// The code a failed request to a provider gets: the provider is
    /// unavailable (transient), except an oversized answer, which is a
    /// broken or hostile provider (`provider_error`).
    pub fn code(&self) -> ErrorCode {
        match self {
            HttpError::Transport(_) | HttpError::Status(_) => ErrorCode::ProviderUnavailable,
            HttpError::TooLarge => ErrorCode::ProviderError,
        }
    }
}

/// Whether an answer's status means "try again later": any 5xx, and 429.
fn is_unavailable(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// Reads a body, at most `limit` bytes: refused up front when its
/// `Content-Length` says more, else read chunk by chunk and dropped as soon
/// as more arrives.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, HttpError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(HttpError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > limit {
            return Err(HttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The shared HTTP client (cheap to clone).
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl HttpClient {
    /// Builds the client: ring-only rustls, web PKI roots + `extra_roots_pem`,
    /// no redirects, `timeout` for each request (connect bounded too).
    pub fn new(extra_roots_pem: &[String], timeout: Duration) -> Result<HttpClient> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for (i, pem) in extra_roots_pem.iter().enumerate() {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| {
                    Error::validation(
                        format!("extra_root_certs_pem[{i}]"),
                        format!("not a PEM certificate: {e}"),
                    )
                })?;
                roots.add(cert).map_err(|e| {
                    Error::validation(
                        format!("extra_root_certs_pem[{i}]"),
                        format!("unusable certificate: {e}"),
                    )
                })?;
                added += 1;
            }
            if added == 0 {
                return Err(Error::validation(
                    format!("extra_root_certs_pem[{i}]"),
                    "holds no PEM certificate",
                ));
            }
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorCode::Internal, format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .user_agent(concat!("mailsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::new(ErrorCode::Internal, format!("HTTP client setup: {e}")))?;
        Ok(HttpClient { client })
    }

    /// Sends one `oauth2` request. 5xx and 429 answers become
    /// [`HttpError::Status`]; bodies are capped at [`MAX_BODY_BYTES`].
    pub fn execute(
        &self,
        request: oauth2::HttpRequest,
    ) -> BoxFuture<'static, Result<oauth2::HttpResponse, HttpError>> {
        let client = self.client.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let url = parts.uri.to_string();
            let mut builder = client.request(parts.method, url).body(body);
            for (name, value) in parts.headers.iter() {
                builder = builder.header(name, value);
            }
            let response = builder.send().await.map_err(describe)?;
            let status = response.status();
            if is_unavailable(status) {
                return Err(HttpError::Status(status.as_u16()));
            }
            let headers = response.headers().clone();
            let bytes = read_capped(response, MAX_BODY_BYTES).await?;
            let mut out = oauth2::HttpResponse::new(bytes);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(out)
        })
    }

    /// The adapter the `oauth2` crate's `request_async` takes.
    pub fn oauth2(
        &self,
    ) -> impl Fn(oauth2::HttpRequest) -> BoxFuture<'static, Result<oauth2::HttpResponse, HttpError>> + '_
    {
        move |request| self.execute(request)
    }

    /// `GET` a JSON document (discovery, userinfo). `bearer` adds an
    /// `Authorization: Bearer` header. Returns the status and the body.
    pub async fn get_json(
        &self,
        url: &url::Url,
        bearer: Option<&str>,
    ) -> Result<(u16, serde_json::Value), HttpError> {
        let mut builder = self
            .client
            .get(url.clone())
            .header("accept", "application/json");
        if let Some(token) = bearer {
            builder = builder.bearer_auth(token);
        }
        let response = builder.send().await.map_err(describe)?;
        let status = response.status();
        if is_unavailable(status) {
            return Err(HttpError::Status(status.as_u16()));
        }
        let bytes = read_capped(response, MAX_BODY_BYTES).await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status.as_u16(), value))
    }
}

impl HttpClient {
    /// `POST` an `application/x-www-form-urlencoded` body (revocation).
    /// Returns the status and the JSON body (`Null` if not JSON).
    pub async fn post_form(
        &self,
        url: &url::Url,
        form: &[(&str, &str)],
    ) -> Result<(u16, serde_json::Value), HttpError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = self
            .client
            .post(url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(describe)?;
        let status = response.status();
        if is_unavailable(status) {
            return Err(HttpError::Status(status.as_u16()));
        }
        let bytes = read_capped(response, MAX_BODY_BYTES).await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status.as_u16(), value))
    }
}

/// Describes a reqwest error without its URL query (never carries secrets:
/// our secrets travel in bodies, but be strict anyway).
fn describe(err: reqwest::Error) -> HttpError {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_body() || err.is_decode() {
        "could not read the answer"
    } else {
        "request failed"
    };
    let url = err
        .url()
        .map(|u| {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{}{port}{}",
                u.scheme(),
                u.host_str().unwrap_or("?"),
                u.path()
            )
        })
        .unwrap_or_default();
    let mut detail = String::new();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        HttpError::Transport(format!("{kind} {url}"))
    } else {
        HttpError::Transport(format!("{kind} {url}: {detail}"))
    }
}
