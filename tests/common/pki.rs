//! Test certificates: a throw-away CA minting leaves with `rcgen`, and the TLS configurations
//! (server and client) built from it, all on the one crypto provider the proxy uses.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;

/// The crypto provider of every TLS configuration in the tests (aws-lc-rs, as the proxy).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Key algorithm for a leaf certificate.
#[derive(Debug, Clone, Copy)]
pub enum KeyAlg {
    EcdsaP256,
    Rsa2048,
    Ed25519,
}

/// A throw-away certificate authority.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub cert_pem: String,
    pub ca_file: PathBuf,
    key: KeyPair,
    params: CertificateParams,
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "trackproxy test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.clone().self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        TestCa {
            dir,
            cert_pem: cert.pem(),
            ca_file,
            key,
            params,
        }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        rustls::pki_types::pem::PemObject::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }

    /// Issues a leaf for `names`, valid from `not_before_days` to `not_after_days` relative to
    /// now; returns (chain PEM with the CA appended, key PEM).
    pub fn issue_with(
        &self,
        names: &[&str],
        alg: KeyAlg,
        not_before_days: i64,
        not_after_days: i64,
    ) -> (String, String) {
        let key = match alg {
            KeyAlg::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyAlg::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            KeyAlg::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        }
        .unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(not_before_days);
        params.not_after = now + time::Duration::days(not_after_days);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        )
    }

    pub fn issue(&self, names: &[&str], alg: KeyAlg) -> (String, String) {
        self.issue_with(names, alg, -1, 90)
    }

    /// Issues a leaf and writes it to `<file_stem>.crt` / `.key` in the CA's directory.
    pub fn write_leaf(&self, file_stem: &str, names: &[&str], alg: KeyAlg) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names, alg);
        self.write_files(file_stem, &cert, &key)
    }

    pub fn write_files(&self, file_stem: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let c = self.dir.path().join(format!("{file_stem}.crt"));
        let k = self.dir.path().join(format!("{file_stem}.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    /// A TLS server configuration (ALPN `http/1.1`) with a fresh leaf for `names`: for the local
    /// upstream and websites the tests run.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.issue(names, KeyAlg::EcdsaP256);
        let certs: Vec<CertificateDer<'static>> =
            rustls::pki_types::pem::PemObject::pem_slice_iter(cert.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = rustls::pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}
