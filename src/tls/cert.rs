//! What a certificate is, wherever it came from: [`CertInfo`] (names, issuer, validity) with
//! its [`CertSource`], how a certificate name matches a host (RFC 6125 §6.4.3), and the
//! leaf parsing every source shares.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;

/// Where a certificate came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// A `[[tls.certificates]]` entry; its config key, such as `tls.certificates[0]`.
    File(String),
    /// Generated at start (`tls.self_signed`).
    SelfSigned,
    /// Issued over ACME by the configured directory.
    Acme,
    /// Issued over ACME by a directory configured before a reload: served until the new
    /// directory issues one, and replaced at once.
    AcmePreviousDirectory,
    /// Presented by a server trackproxy connected to (`trackproxy doctor`).
    Presented,
}

impl CertSource {
    /// The `source` label of the certificate-expiry metric.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            CertSource::File(_) => "file",
            CertSource::SelfSigned => "self_signed",
            CertSource::Acme | CertSource::AcmePreviousDirectory => "acme",
            CertSource::Presented => "presented",
        }
    }
}

impl fmt::Display for CertSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertSource::File(key) => f.write_str(key),
            CertSource::SelfSigned => f.write_str("self-signed"),
            CertSource::Acme => f.write_str("acme"),
            CertSource::AcmePreviousDirectory => f.write_str("acme (previous directory)"),
            CertSource::Presented => f.write_str("presented"),
        }
    }
}

/// What a loaded certificate is, for logs, `certs` and metrics.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Where it came from.
    pub source: CertSource,
    /// DNS names in its subjectAltName, lower case.
    pub names: Vec<String>,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// Expiry.
    pub not_after: SystemTime,
}

impl CertInfo {
    /// Whether the certificate is valid for `host` (exact or one-label wildcard match).
    #[must_use]
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, host))
    }
}

/// `name` (a SAN, lower case) matches `host` (lower case): exactly, or `*.rest` matching one
/// whole left-most label.
#[must_use]
pub fn name_matches(name: &str, host: &str) -> bool {
    if let Some(suffix) = name.strip_prefix("*.") {
        match host.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest == suffix,
            None => false,
        }
    } else {
        name == host
    }
}

/// Parses the facts `certs`, `doctor` and the host check need from a leaf certificate.
///
/// # Errors
/// When the certificate cannot be parsed.
pub fn inspect(leaf: Option<&CertificateDer<'_>>, source: CertSource) -> Result<CertInfo, String> {
    let leaf = leaf.ok_or("empty certificate chain")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = gn {
                names.push(n.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    let unix = |t: x509_parser::time::ASN1Time| {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Ok(CertInfo {
        source,
        names,
        issuer: cert.issuer().to_string(),
        not_before: unix(cert.validity().not_before),
        not_after: unix(cert.validity().not_after),
    })
}

/// Whole days from now until `t` (negative once passed).
#[must_use]
pub fn days_left(t: SystemTime) -> i64 {
    let secs = match t.duration_since(SystemTime::now()) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    secs.div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_label() {
        assert!(name_matches("url1234.example.com", "url1234.example.com"));
        assert!(name_matches("*.example.com", "url1234.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("url1234.example.com", "url1235.example.com"));
    }
}
