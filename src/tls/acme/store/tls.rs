//! TLS to PostgreSQL: the libpq URL parameters `sslmode` and `sslrootcert`, on rustls with
//! the process's one crypto provider (aws-lc-rs).
//!
//! tokio-postgres itself knows `sslmode=disable|prefer|require` and no `sslrootcert`; this
//! module takes both out of the URL and decides how the server is checked:
//!
//! | `sslmode`            | encrypted              | server certificate checked             |
//! |----------------------|------------------------|----------------------------------------|
//! | `disable`            | no                     | —                                      |
//! | `prefer` (default)   | if the server offers it | no (as libpq: against passive readers) |
//! | `require`            | yes                    | chain and host name (stricter than libpq) |
//! | `verify-ca`          | yes                    | chain only (`sslrootcert` required)    |
//! | `verify-full`        | yes                    | chain and host name                    |
//!
//! The chain is checked against `sslrootcert` when given (a PEM file, as libpq: instead of
//! the public roots), else against the public web roots (`webpki-roots`); `sslrootcert=system`
//! names those explicitly. `sslrootcert` without `sslmode` means `verify-full`.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::crypto::SignaturesOnly;

/// How the server is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// `disable`: no TLS.
    Disable,
    /// `prefer`: TLS when offered, certificate not checked.
    Prefer,
    /// `verify-ca`: chain only.
    Chain,
    /// `require`, `verify-full`: chain and host name.
    Full,
}

/// The URL for tokio-postgres and the TLS it needs.
#[derive(Debug)]
pub(super) struct Tls {
    /// The URL without `sslrootcert`, `verify-*` written as `require`.
    pub(super) url: String,
    pub(super) check: Check,
    pub(super) root: Option<String>,
}

impl Tls {
    /// Takes `sslmode` and `sslrootcert` out of `url`.
    ///
    /// # Errors
    /// An unknown `sslmode`, `verify-ca` without `sslrootcert`, or `sslrootcert` with a mode
    /// that does not check certificates.
    pub(super) fn from_url(url: &str) -> Result<Tls, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let mut mode = None;
        let mut root = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match decode(k).as_str() {
                "sslrootcert" => root = Some(decode(v)),
                "sslmode" => {
                    let m = match decode(v).as_str() {
                        "disable" => Check::Disable,
                        "prefer" => Check::Prefer,
                        // `require` checks as `verify-full` does (libpq's checks nothing).
                        "require" | "verify-full" => Check::Full,
                        "verify-ca" => Check::Chain,
                        other => {
                            return Err(format!(
                                "sslmode={other}: expected disable, prefer, require, verify-ca \
                                 or verify-full"
                            ));
                        }
                    };
                    mode = Some(m);
                    kept.push(
                        match m {
                            Check::Disable => "sslmode=disable",
                            Check::Prefer => "sslmode=prefer",
                            Check::Chain | Check::Full => "sslmode=require",
                        }
                        .to_owned(),
                    );
                }
                _ => kept.push(pair.to_owned()),
            }
        }
        let check = match (mode, &root) {
            (None, Some(_)) => {
                kept.push("sslmode=require".into());
                Check::Full
            }
            (None, None) => Check::Prefer,
            (Some(Check::Disable | Check::Prefer), Some(_)) => {
                return Err(
                    "sslrootcert is only used with sslmode=require, verify-ca or \
                            verify-full (prefer and disable check no certificate)"
                        .into(),
                );
            }
            (Some(Check::Chain), None) => {
                return Err(
                    "sslmode=verify-ca needs sslrootcert=/path/ca.pem (the public roots \
                            alone would accept any publicly issued certificate)"
                        .into(),
                );
            }
            (Some(m), _) => m,
        };
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok(Tls { url, check, root })
    }

    /// The connector for tokio-postgres.
    ///
    /// # Errors
    /// `sslrootcert` cannot be read or holds no usable certificate (the message names it).
    pub(super) fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = crate::tls::crypto::provider();
        let verifier: Arc<dyn ServerCertVerifier> = match self.check {
            Check::Disable | Check::Prefer => Arc::new(SignaturesOnly(provider.clone())),
            Check::Chain | Check::Full => {
                let mut roots = rustls::RootCertStore::empty();
                match self.root.as_deref() {
                    None | Some("system") => {
                        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                    }
                    Some(path) => {
                        let problem = |m: String| format!("sslrootcert={path}: {m}");
                        let certs = CertificateDer::pem_file_iter(path)
                            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                            .map_err(|e| problem(format!("cannot read it: {e}")))?;
                        if certs.is_empty() {
                            return Err(problem("holds no CERTIFICATE block".into()));
                        }
                        for c in certs {
                            roots
                                .add(c)
                                .map_err(|e| problem(format!("unusable CA certificate: {e}")))?;
                        }
                    }
                }
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| format!("sslrootcert: {e}"))?;
                if self.check == Check::Chain {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

/// `%XX` decoded (as tokio-postgres decodes URL parameters); invalid escapes kept.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `sslmode=verify-ca`: the chain is checked, a host name that does not match is accepted
/// (webpki checks the chain before the name, so a name error means the chain was good).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_modes_become_what_tokio_postgres_knows() {
        let t = Tls::from_url(
            "postgres://u@h/d?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(t.url, "postgres://u@h/d?sslmode=require&application_name=x");
        assert_eq!(t.check, Check::Full);
        assert_eq!(t.root.as_deref(), Some("/etc/ca.pem"));
        let t = Tls::from_url("postgres://u@h/d?sslmode=verify-ca&sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            (t.check, t.url.as_str()),
            (Check::Chain, "postgres://u@h/d?sslmode=require")
        );
        let t = Tls::from_url("postgres://u@h/d?sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            (t.check, t.url.as_str()),
            (Check::Full, "postgres://u@h/d?sslmode=require")
        );
        let t = Tls::from_url("postgres://u@h/d").unwrap();
        assert_eq!(
            (t.check, t.url.as_str()),
            (Check::Prefer, "postgres://u@h/d")
        );
        assert_eq!(
            Tls::from_url("postgres://u@h/d?sslmode=disable")
                .unwrap()
                .check,
            Check::Disable
        );
        assert_eq!(
            Tls::from_url("postgres://u@h/d?sslmode=require")
                .unwrap()
                .check,
            Check::Full
        );
    }

    #[test]
    fn contradictions_are_refused() {
        assert!(
            Tls::from_url("postgres://h/d?sslmode=allow")
                .unwrap_err()
                .contains("sslmode=allow")
        );
        assert!(
            Tls::from_url("postgres://h/d?sslmode=verify-ca")
                .unwrap_err()
                .contains("sslrootcert")
        );
        assert!(
            Tls::from_url("postgres://h/d?sslmode=prefer&sslrootcert=/c")
                .unwrap_err()
                .contains("sslrootcert")
        );
    }

    #[test]
    fn an_unreadable_root_file_names_the_key_and_the_file() {
        let t = Tls::from_url("postgres://h/d?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .unwrap();
        let e = t.connector().err().unwrap();
        assert!(e.contains("sslrootcert=/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("pgtls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("empty.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let t = Tls::from_url(&format!("postgres://h/d?sslrootcert={}", f.display())).unwrap();
        let e = t.connector().err().unwrap();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
