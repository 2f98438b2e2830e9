//! Certificates from PEM files, and the self-signed certificate of the offline default.
//!
//! A file certificate serves the configured hosts its SANs cover (wildcards match one label,
//! RFC 6125 §6.4.3). Every host must end up with exactly one certificate; which one is decided
//! here, at load time, so the SNI lookup on the handshake path is a single map read.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::cert::{CertInfo, CertSource, inspect};
use super::sni::CertMap;
use crate::config::{self, CertificateFiles, Config, Problem};

/// A certificate with its key, ready for rustls.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// Parsed facts about the leaf.
    pub info: CertInfo,
}

/// The certificate chosen for each configured host.
#[derive(Debug, Default)]
pub struct HostCerts {
    /// Host → certificate.
    pub certs: CertMap,
    /// Host → facts about its certificate.
    pub info: Vec<(String, CertInfo)>,
    /// Hosts no certificate covers (an ACME issuer may take them).
    pub uncovered: Vec<String>,
}

/// Reads one `[[tls.certificates]]` entry. Keys may be ECDSA, RSA or Ed25519, in PKCS#8,
/// PKCS#1 or SEC1 PEM; the chain is every certificate in the file, leaf first.
///
/// # Errors
/// A problem naming the entry's `cert` or `key` key and what is wrong with the file.
pub fn load_files(
    files: &CertificateFiles,
    provider: &CryptoProvider,
    origin: &str,
) -> Result<Loaded, Problem> {
    let problem = |which: &str, message: String| Problem {
        key: format!("{}.{which}", files.key_path),
        origin: origin.to_owned(),
        message,
    };
    let chain = read_chain(&files.cert).map_err(|m| problem("cert", m))?;
    let key = read_key(&files.key).map_err(|m| problem("key", m))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        problem(
            "key",
            format!(
                "{} does not fit the certificate in {}: {e}",
                files.key.display(),
                files.cert.display()
            ),
        )
    })?;
    let info = inspect(
        certified.cert.first(),
        CertSource::File(files.key_path.clone()),
    )
    .map_err(|m| problem("cert", format!("{}: {m}", files.cert.display())))?;
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a valid PEM file: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no CERTIFICATE block", path.display()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "{} holds no usable private key (PKCS#8, RSA or EC PEM): {e}",
            path.display()
        )
    })
}

/// Generates one self-signed ECDSA P-256 certificate for `hosts`.
///
/// # Errors
/// When key generation or signing fails.
pub fn self_signed(hosts: &[String], provider: &CryptoProvider) -> Result<Loaded, String> {
    let fail = |e: rcgen::Error| format!("generating a self-signed certificate: {e}");
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(fail)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "trackproxy self-signed");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    // ECDSA P-256: the cheapest handshake for the server.
    let signing_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let cert = params.self_signed(&signing_key).map_err(fail)?;
    let der = cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
    let certified = CertifiedKey::from_der(vec![der], key, provider)
        .map_err(|e| format!("loading the self-signed certificate: {e}"))?;
    let info = inspect(certified.cert.first(), CertSource::SelfSigned)?;
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

/// Loads every file certificate of `cfg`, chooses one per configured host (first file that
/// covers it), and generates a self-signed certificate for the rest if `tls.self_signed` is on
/// and `[tls.acme]` is not configured (ACME takes the hosts no file covers).
///
/// # Errors
/// Every unreadable or mismatched file, each with its key.
pub fn load(cfg: &Config, provider: &CryptoProvider) -> Result<HostCerts, config::Errors> {
    let mut problems = Vec::new();
    let mut loaded = Vec::new();
    for files in &cfg.tls.certificates {
        match load_files(files, provider, &cfg.origin) {
            Ok(l) => loaded.push(l),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(config::Errors(problems));
    }
    for l in &loaded {
        if !cfg.hosts.iter().any(|h| l.info.covers(&h.name)) {
            tracing::warn!(
                source = %l.info.source,
                names = ?l.info.names,
                "certificate covers none of the configured hosts"
            );
        }
    }
    let mut out = HostCerts::default();
    for host in &cfg.hosts {
        match loaded.iter().find(|l| l.info.covers(&host.name)) {
            Some(l) => {
                out.certs.insert(host.name.clone(), l.key.clone());
                out.info.push((host.name.clone(), l.info.clone()));
            }
            None => out.uncovered.push(host.name.clone()),
        }
    }
    if cfg.tls.self_signed && cfg.tls.acme.is_none() && !out.uncovered.is_empty() {
        let generated = self_signed(&out.uncovered, provider)
            .map_err(|m| config::Errors::one(&cfg.origin, "tls.self_signed", m))?;
        for host in out.uncovered.drain(..) {
            out.certs.insert(host.clone(), generated.key.clone());
            out.info.push((host, generated.info.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn self_signed_covers_its_hosts() {
        let p = crate::tls::provider();
        let l = self_signed(&["localhost".into(), "url1.example.test".into()], &p).unwrap();
        assert!(l.info.covers("localhost"));
        assert!(l.info.covers("url1.example.test"));
        assert!(!l.info.covers("other.example.test"));
        assert!(l.info.not_after > SystemTime::now());
    }
}
