//! TLS client configuration: webpki roots plus extra trusted roots, ring only.
//!
//! [`TlsSettings`] builds one `rustls::ClientConfig` with the ring provider
//! (`builder_with_provider`, never the process default, so a second crypto
//! provider elsewhere cannot make it panic). It trusts the bundled Mozilla
//! roots (`webpki-roots`) and any extra root certificates the caller adds
//! (a company CA, the test stack's CA). There is deliberately no way to turn
//! verification off: tests trust their own CA instead.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::error::{Error, ErrorCode, Result};

/// Which certificates to trust; cheap to clone.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<ClientConfig>,
    extra_roots: Arc<Vec<CertificateDer<'static>>>,
    webpki_roots: bool,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("webpki_roots", &self.webpki_roots)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings::webpki()
    }
}

impl TlsSettings {
    /// Trust the bundled Mozilla root certificates (webpki-roots).
    pub fn webpki() -> Self {
        Self::build(true, Vec::new()).unwrap_or_else(|_| {
            // Building from the bundled roots alone cannot fail; keep a
            // config that trusts nothing rather than panicking.
            Self::build(false, Vec::new()).unwrap_or_else(|_| unreachable_config())
        })
    }

    /// Trust only the given roots (no bundled roots). Useful for tests that
    /// must prove a certificate from another CA is refused.
    pub fn only_roots(roots: Vec<CertificateDer<'static>>) -> Result<Self> {
        Self::build(false, roots)
    }

    /// Adds the root certificates in PEM text (one or more `CERTIFICATE` blocks).
    pub fn with_root_pem(self, pem: &[u8]) -> Result<Self> {
        let mut certs = Vec::new();
        for item in CertificateDer::pem_slice_iter(pem) {
            let cert = item.map_err(|e| {
                Error::new(
                    ErrorCode::Tls,
                    format!("cannot read root certificate PEM: {e}"),
                )
            })?;
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err(Error::new(
                ErrorCode::Tls,
                "no CERTIFICATE block in the root certificate PEM",
            ));
        }
        let mut roots = (*self.extra_roots).clone();
        roots.extend(certs);
        Self::build(self.webpki_roots, roots)
    }

    /// Adds the root certificates of a PEM file.
    pub fn with_root_pem_file(self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorCode::Tls,
                format!("cannot read root certificate file {}: {e}", path.display()),
            )
        })?;
        self.with_root_pem(&pem)
    }

    /// Adds one DER-encoded root certificate.
    pub fn with_root_der(self, der: Vec<u8>) -> Result<Self> {
        let mut roots = (*self.extra_roots).clone();
        roots.push(CertificateDer::from(der));
        Self::build(self.webpki_roots, roots)
    }

    /// The rustls client configuration (ring provider, verification on).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// The extra root certificates, DER-encoded (for libraries that build
    /// their own configuration, such as lettre's STARTTLS).
    pub fn extra_roots(&self) -> &[CertificateDer<'static>] {
        &self.extra_roots
    }

    /// Whether the bundled webpki roots are trusted.
    pub fn trusts_webpki_roots(&self) -> bool {
        self.webpki_roots
    }

    fn build(webpki_roots: bool, extra: Vec<CertificateDer<'static>>) -> Result<Self> {
        let mut store = RootCertStore::empty();
        if webpki_roots {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for cert in &extra {
            store.add(cert.clone()).map_err(|e| {
                Error::new(ErrorCode::Tls, format!("invalid root certificate: {e}"))
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(ErrorCode::Tls, format!("TLS configuration: {e}")))?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(TlsSettings {
            config: Arc::new(config),
            extra_roots: Arc::new(extra),
            webpki_roots,
        })
    }
}

fn unreachable_config() -> TlsSettings {
    // A config with no roots trusts nothing; used only if rustls refuses the
    // safe defaults, which the ring provider always supports.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider);
    let config = match builder.with_safe_default_protocol_versions() {
        Ok(b) => b
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
        Err(_) => {
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map(|b| {
                    b.with_root_certificates(RootCertStore::empty())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|_| unreachable!("ring supports TLS 1.3"))
        }
    };
    TlsSettings {
        config: Arc::new(config),
        extra_roots: Arc::new(Vec::new()),
        webpki_roots: false,
    }
}

/// Turns a rustls error into a person-readable reason.
pub(crate) fn describe_rustls_error(err: &rustls::Error, host: &str) -> String {
    use rustls::CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::UnknownIssuer => format!(
                "certificate not trusted: {host} presented a certificate from an unknown issuer (add the CA as a trusted root if it is yours)"
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("certificate not valid for host {host}")
            }
            C::Expired | C::ExpiredContext { .. } => {
                format!("certificate of {host} has expired")
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                format!("certificate of {host} is not valid yet")
            }
            C::Revoked => format!("certificate of {host} is revoked"),
            C::BadSignature => format!("certificate of {host} has a bad signature"),
            other => format!("certificate of {host} rejected: {other:?}"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "TLS handshake with {host} failed: the server did not answer with TLS (is the port right?)"
        ),
        rustls::Error::AlertReceived(alert) => {
            format!("TLS handshake with {host} failed: the server sent alert {alert:?}")
        }
        other => format!("TLS handshake with {host} failed: {other}"),
    }
}
