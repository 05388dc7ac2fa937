//! Field rules shared by the model: email addresses, hosts, and Google's
//! rules for redirect URIs and JavaScript origins.

use url::{Host, Url};

use crate::error::{Error, Result};

/// Whether `host` is `localhost` or a loopback IP literal.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// A practical email address check: one `@`, a non-empty local part of
/// printable ASCII without spaces, and a domain with a dot (or `localhost`).
/// Returns the address lower-cased, which is how mailboxes are compared.
pub fn email(field: &str, value: &str) -> Result<String> {
    let value = value.trim();
    let bad = |why: &str| {
        Err(Error::validation(
            field,
            format!("'{value}' is not a valid email address: {why}"),
        ))
    };
    if value.is_empty() {
        return Err(Error::validation(field, "is required"));
    }
    if value.len() > 254 {
        return bad("longer than 254 characters");
    }
    let Some((local, domain)) = value.rsplit_once('@') else {
        return bad("missing '@'");
    };
    if !value.is_ascii() {
        // Internationalized addresses need SMTPUTF8 end to end (RFC 6531),
        // which Gmail's submission path and most CRMs do not give; refuse
        // them here instead of failing later at send time.
        return bad(
            "non-ASCII characters are not supported (internationalized addresses need SMTPUTF8)",
        );
    }
    if local.is_empty() || local.len() > 64 {
        return bad("the part before '@' must be 1 to 64 characters");
    }
    if local.contains('@')
        || local.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"')
        })
    {
        return bad("the part before '@' has characters not allowed here");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return bad("misplaced '.' before '@'");
    }
    if !domain.contains('.') && !domain.eq_ignore_ascii_case("localhost") {
        return bad("the domain needs a dot");
    }
    host(field, domain).map_err(|_| {
        Error::validation(
            field,
            format!("'{value}' is not a valid email address: bad domain"),
        )
    })?;
    Ok(value.to_ascii_lowercase())
}

/// A host name or IP address.
pub fn host(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::validation(field, "is required"));
    }
    if value.len() > 253 {
        return Err(Error::validation(field, "must be at most 253 characters"));
    }
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let labels_ok = value.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if !labels_ok {
        return Err(Error::validation(
            field,
            format!("'{value}' is not a valid host name"),
        ));
    }
    Ok(())
}

/// An OAuth issuer: absolute https URL (http allowed for loopback).
pub fn issuer_url(field: &str, value: &str) -> Result<Url> {
    let url = Url::parse(value).map_err(|e| Error::validation(field, format!("not a URL: {e}")))?;
    require_secure_scheme(field, &url)?;
    Ok(url)
}

fn require_secure_scheme(field: &str, url: &Url) -> Result<()> {
    let loopback = url.host_str().map(is_loopback_host).unwrap_or(false);
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(Error::validation(
            field,
            "must use https (http is allowed only for localhost or loopback)",
        )),
        other => Err(Error::validation(
            field,
            format!("scheme '{other}' is not allowed; use https"),
        )),
    }
}

/// Checks the rules Google applies to redirect URIs and, when `origin` is
/// set, the stricter rules for JavaScript origins.
fn google_uri(field: &str, value: &str, origin: bool) -> Result<Url> {
    if value.is_empty() {
        return Err(Error::validation(field, "is required"));
    }
    if value.chars().any(|c| c.is_control() || c == '\0') {
        return Err(Error::validation(
            field,
            "must not contain control characters or NUL",
        ));
    }
    if value.contains('*') {
        return Err(Error::validation(field, "must not contain a wildcard '*'"));
    }
    if value.contains('#') {
        return Err(Error::validation(
            field,
            "must not contain a fragment ('#')",
        ));
    }
    if has_bad_percent_encoding(value) {
        return Err(Error::validation(field, "has an invalid %-encoding"));
    }
    let raw_path = value
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(value);
    if raw_path.split(['?']).next().unwrap_or("").contains("/..") {
        return Err(Error::validation(field, "must not contain '/..'"));
    }
    let url = Url::parse(value)
        .map_err(|e| Error::validation(field, format!("not an absolute URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::validation(
            field,
            "must not contain user info ('user@')",
        ));
    }
    require_secure_scheme(field, &url)?;
    match url.host() {
        None => return Err(Error::validation(field, "needs a host")),
        Some(Host::Ipv4(ip)) if !ip.is_loopback() => {
            return Err(Error::validation(
                field,
                "must not be a raw IP address (localhost is allowed)",
            ));
        }
        Some(Host::Ipv6(ip)) if !ip.is_loopback() => {
            return Err(Error::validation(
                field,
                "must not be a raw IP address (localhost is allowed)",
            ));
        }
        Some(Host::Domain(domain)) => {
            let domain = domain.to_ascii_lowercase();
            if domain == "googleusercontent.com" || domain.ends_with(".googleusercontent.com") {
                return Err(Error::validation(
                    field,
                    "must not be on googleusercontent.com",
                ));
            }
            if domain != "localhost" {
                let suffix_ok = psl::suffix(domain.as_bytes())
                    .map(|s| s.is_known())
                    .unwrap_or(false);
                if !suffix_ok {
                    return Err(Error::validation(
                        field,
                        format!("host '{domain}' must end in a public top-level domain"),
                    ));
                }
            }
        }
        _ => {}
    }
    if origin {
        if url.query().is_some() {
            return Err(Error::validation(
                field,
                "a JavaScript origin must not have a query",
            ));
        }
        if url.path() != "/" || value.ends_with('/') {
            return Err(Error::validation(
                field,
                "a JavaScript origin must not have a path or end with '/'",
            ));
        }
    }
    Ok(url)
}

fn has_bad_percent_encoding(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !ok {
                return true;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    false
}

/// Validates an authorized redirect URI by Google's rules.
pub fn redirect_uri(field: &str, value: &str) -> Result<Url> {
    google_uri(field, value, false)
}

/// Validates an authorized JavaScript origin by Google's rules.
pub fn javascript_origin(field: &str, value: &str) -> Result<Url> {
    google_uri(field, value, true)
}

/// The registrable domain ("top private domain") of a host, e.g.
/// `contoso.crm.example.com` → `example.com`. `None` for IPs, localhost and
/// hosts without a known public suffix.
pub fn registrable_domain(host: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    psl::domain(host.as_bytes())
        .filter(|d| d.suffix().is_known())
        .and_then(|d| std::str::from_utf8(d.as_bytes()).ok().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn rejects(value: &str) -> String {
        let err = redirect_uri("redirect_uris[0]", value).expect_err(value);
        assert_eq!(err.code(), ErrorCode::Validation);
        assert_eq!(err.field(), Some("redirect_uris[0]"));
        err.message().to_string()
    }

    #[test]
    fn google_redirect_rules() {
        assert!(
            redirect_uri(
                "r",
                "https://contoso.crm.example.com/_grid/cmds/dlg_gmailoauth.aspx"
            )
            .is_ok()
        );
        assert!(redirect_uri("r", "http://localhost:8765/cb").is_ok());
        assert!(redirect_uri("r", "http://127.0.0.1:8765/cb").is_ok());
        assert!(rejects("http://contoso.crm.example.com/cb").contains("https"));
        assert!(rejects("https://*.example.com/cb").contains("wildcard"));
        assert!(rejects("https://crm.example.com/cb#frag").contains("fragment"));
        assert!(rejects("https://user:pw@crm.example.com/cb").contains("user info"));
        assert!(rejects("https://crm.example.com/a/../cb").contains("/.."));
        assert!(rejects("https://203.0.113.7/cb").contains("raw IP"));
        assert!(rejects("https://crm.example.notatld/cb").contains("public top-level"));
        assert!(rejects("https://x.googleusercontent.com/cb").contains("googleusercontent"));
        assert!(rejects("https://crm.example.com/a%zzb").contains("%-encoding"));
        assert!(rejects("https://crm.example.com/a\u{0}b").contains("control"));
        assert!(rejects("ftp://crm.example.com/cb").contains("scheme"));
        assert!(rejects("").contains("required"));
    }

    #[test]
    fn origin_rules() {
        assert!(javascript_origin("o", "https://contoso.crm.example.com").is_ok());
        assert!(javascript_origin("o", "http://localhost:8765").is_ok());
        let e = javascript_origin("o", "https://contoso.crm.example.com/path").unwrap_err();
        assert!(e.message().contains("path"));
        let e = javascript_origin("o", "https://contoso.crm.example.com/?q=1").unwrap_err();
        assert!(e.message().contains("query"));
    }

    #[test]
    fn emails() {
        assert_eq!(email("e", " Alice@Gmail.com ").unwrap(), "alice@gmail.com");
        for bad in [
            "",
            "alice",
            "alice@",
            "@gmail.com",
            "a b@gmail.com",
            "alice@gmail",
            "a..b@x.com",
            "alice@-x.com",
            "üser@example.test",
            "user@exämple.test",
        ] {
            let e = email("email", bad).expect_err(bad);
            assert_eq!(e.field(), Some("email"));
        }
    }

    #[test]
    fn non_ascii_addresses_are_refused_with_one_rule() {
        for bad in ["üser@example.test", "user@bücher.example"] {
            let e = email("email", bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Validation);
            assert!(e.message().contains("non-ASCII"), "{}", e.message());
        }
    }

    #[test]
    fn registrable() {
        assert_eq!(
            registrable_domain("contoso.crm.example.com").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            registrable_domain("org.crm4.dynamics.com").as_deref(),
            Some("dynamics.com")
        );
        assert_eq!(registrable_domain("a.b.co.uk").as_deref(), Some("b.co.uk"));
        assert_eq!(registrable_domain("localhost"), None);
    }

    #[test]
    fn loopback() {
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("[::1]"));
        assert!(!is_loopback_host("imap.gmail.com"));
    }
}
