//! A throw-away CA minted at start, and the ECDSA P-256 certificates the harness needs: the
//! branded host's (served by both proxies) and the upstream's (`localhost`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The branded link host both proxies serve.
pub(crate) const HOST: &str = "url1234.bench.test";

/// PEM files in the run's directory.
pub(crate) struct Pki {
    /// The CA certificate (trusted by the load generator and by both proxies for the upstream).
    pub(crate) ca: PathBuf,
    ca_pem: String,
    /// The branded host's chain (leaf, CA) and key.
    pub(crate) proxy_cert: PathBuf,
    /// Key of [`Pki::proxy_cert`].
    pub(crate) proxy_key: PathBuf,
    upstream_chain: String,
    upstream_key: String,
}

impl Pki {
    /// Mints the CA and both leaves and writes them to `dir`.
    pub(crate) fn create(dir: &Path) -> Result<Self> {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "trackproxy bench CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.clone().self_signed(&ca_key)?;
        let issuer = Issuer::from_params(&ca_params, &ca_key);

        let leaf = |names: &[&str], ips: &[std::net::IpAddr]| -> Result<(String, String)> {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut p =
                CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
            p.subject_alt_names
                .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
            p.distinguished_name.push(DnType::CommonName, names[0]);
            let cert = p.signed_by(&key, &issuer)?;
            Ok((
                format!("{}{}", cert.pem(), ca_cert.pem()),
                key.serialize_pem(),
            ))
        };
        let (proxy_chain, proxy_key) = leaf(&[HOST], &[])?;
        let (upstream_chain, upstream_key) = leaf(&["localhost"], &["127.0.0.1".parse()?])?;

        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            Ok(p)
        };
        Ok(Pki {
            ca: write("ca.pem", &ca_cert.pem())?,
            ca_pem: ca_cert.pem(),
            proxy_cert: write("proxy.crt", &proxy_chain)?,
            proxy_key: write("proxy.key", &proxy_key)?,
            upstream_chain,
            upstream_key,
        })
    }

    /// Roots for clients: the CA only.
    pub(crate) fn roots(&self) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes())?)?;
        Ok(roots)
    }

    /// The upstream's TLS configuration (`localhost`, ALPN http/1.1).
    pub(crate) fn upstream_tls(&self) -> Result<Arc<rustls::ServerConfig>> {
        let chain = CertificateDer::pem_slice_iter(self.upstream_chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(self.upstream_key.as_bytes())?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}
