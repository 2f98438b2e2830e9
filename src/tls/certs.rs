//! Which host gets which certificate: file certificates first (the first whose names cover
//! the host), then ACME for the hosts no file covers (when `[tls.acme]` is configured), else
//! the self-signed one (`tls.self_signed`), else a configuration problem. Decided once per
//! configuration, so the SNI lookup on the handshake path is a single map read.

use tracing::info;

use super::acme;
use super::cert::{CertInfo, CertSource};
use super::files;
use super::sni::CertMap;
use crate::config::{Config, Problem};
use crate::metrics::Metrics;

/// The certificates a configuration asks for, read from disk: file and self-signed ones, and
/// the ACME hosts with their cached certificates.
pub struct Certs {
    /// Host → file or self-signed certificate.
    pub map: CertMap,
    /// Each host with a certificate now, with facts about it.
    pub info: Vec<(String, CertInfo)>,
    /// The ACME hosts and settings, when `[tls.acme]` is configured.
    pub acme: Option<acme::Plan>,
}

impl Certs {
    /// Reads every certificate `cfg` names and plans ACME for the hosts no file covers.
    ///
    /// # Errors
    /// Every problem found, each with its key.
    pub fn load(cfg: &Config) -> Result<Certs, Vec<Problem>> {
        let provider = super::crypto::provider();
        let loaded = files::load(cfg, &provider).map_err(|e| e.0)?;
        let acme = if let Some(a) = &cfg.tls.acme {
            Some(acme::plan(a, &cfg.origin, &loaded.uncovered, &provider)?)
        } else {
            let problems = uncovered_problems(cfg, &loaded.uncovered);
            if !problems.is_empty() {
                return Err(problems);
            }
            None
        };
        let mut info = loaded.info;
        for (host, a) in acme.iter().flat_map(|p| &p.hosts) {
            if let Some(c) = a.certificate() {
                info.push((host.clone(), c));
            }
        }
        Ok(Certs {
            map: loaded.certs,
            info,
            acme,
        })
    }

    /// Sets the expiry gauge of every certificate loaded now.
    pub fn export(&self, metrics: &Metrics) {
        for (host, c) in &self.info {
            metrics.certificate_expiry(host, c.source.label(), c.not_after);
        }
    }

    /// Logs each host's certificate, and the ACME hosts still waiting for one.
    pub fn log(&self) {
        for (host, c) in &self.info {
            info!(
                host,
                source = %c.source,
                issuer = %c.issuer,
                not_after = %humantime::format_rfc3339_seconds(c.not_after),
                "certificate loaded"
            );
        }
        for (host, a) in self.acme.iter().flat_map(|p| &p.hosts) {
            if a.certificate().is_none() {
                info!(host, "no certificate yet: it will be ordered over ACME");
            }
        }
    }
}

/// Problems for hosts that have no certificate source at all.
#[must_use]
pub fn uncovered_problems(cfg: &Config, uncovered: &[String]) -> Vec<Problem> {
    cfg.hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| uncovered.contains(&h.name))
        .map(|(i, h)| Problem {
            key: format!("hosts[{i}].name"),
            origin: cfg.origin.clone(),
            message: format!(
                "no certificate for {:?}: no [[tls.certificates]] entry lists it in its \
                 subjectAltName; add one, configure [tls.acme] to get one from a CA, or set \
                 tls.self_signed = true for testing",
                h.name
            ),
        })
        .collect()
}

/// One host's certificate as `trackproxy certs` shows it.
#[derive(Debug, Clone)]
pub struct HostCertificate {
    /// The configured host.
    pub host: String,
    /// Where it comes from; `None`: no source at all.
    pub source: Option<CertSource>,
    /// The certificate, when there is one on disk.
    pub cert: Option<CertInfo>,
    /// Anything else worth knowing: not issued yet, retry pending, unreadable file.
    pub note: Option<String>,
}

/// The certificate and note of a host as the shared store holds it: who ordered it and when,
/// the next renewal, and the back-off while failing.
fn store_note(stored: Option<&acme::StoredHost>) -> (Option<CertInfo>, String) {
    let t = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let Some(s) = stored else {
        return (None, "store: not issued yet".to_owned());
    };
    let mut parts = Vec::new();
    match &s.ordered {
        Some((by, at)) => parts.push(format!("store: ordered by {by} at {}", t(*at))),
        None => parts.push("store: not issued yet".to_owned()),
    }
    if let Some(r) = s.renew_at {
        parts.push(format!("renewal due {}", t(r)));
    }
    if let Some((failures, next)) = s.backoff {
        let plural = if failures == 1 { "" } else { "s" };
        parts.push(match next {
            Some(n) => format!("{failures} failed attempt{plural}, next at {}", t(n)),
            None => format!("{failures} failed attempt{plural}"),
        });
    }
    (s.cert.clone(), parts.join("; "))
}

/// Every configured host with the certificate it would be served with, read from the
/// certificate files and the ACME cache, or with `tls.acme.store` the store (read only; when
/// it cannot be read, the local copies under `cache_dir`, with a note). Starts nothing,
/// writes nothing.
#[must_use]
pub fn inventory(cfg: &Config) -> Vec<HostCertificate> {
    let provider = super::crypto::provider();
    let mut files = Vec::new();
    let mut notes = Vec::new();
    for f in &cfg.tls.certificates {
        match files::load_files(f, &provider, &cfg.origin) {
            Ok(l) => files.push(l),
            Err(p) => notes.push(p.to_string()),
        }
    }
    let stored = cfg.tls.acme.as_ref().and_then(acme::store_view);
    cfg.hosts
        .iter()
        .map(|h| {
            let host = h.name.clone();
            if let Some(l) = files.iter().find(|l| l.info.covers(&host)) {
                return HostCertificate {
                    host,
                    source: Some(l.info.source.clone()),
                    cert: Some(l.info.clone()),
                    note: None,
                };
            }
            let unreadable = (!notes.is_empty()).then(|| notes.join("; "));
            if let Some(Ok(view)) = &stored {
                let (cert, note) = store_note(view.get(&host));
                return HostCertificate {
                    host,
                    source: Some(CertSource::Acme),
                    cert,
                    note: Some(note),
                };
            }
            if let Some(a) = &cfg.tls.acme {
                let (cert, mut note) = match acme::cached_certificate(a, &host, &provider) {
                    Ok(Some(c)) => (Some(c), None),
                    Ok(None) => (None, Some("not issued yet".to_owned())),
                    Err(m) => (None, Some(m)),
                };
                if let Some((failures, next)) = acme::cached_backoff(a, &host) {
                    let retry = format!(
                        "{failures} failed attempt{}, next at {}",
                        if failures == 1 { "" } else { "s" },
                        humantime::format_rfc3339_seconds(next)
                    );
                    note = Some(note.map_or(retry.clone(), |n| format!("{n}; {retry}")));
                }
                if let Some(Err(e)) = &stored {
                    let unread = format!(
                        "store not readable ({}): local copy shown",
                        crate::error::chain(e)
                    );
                    note = Some(note.map_or(unread.clone(), |n| format!("{unread}; {n}")));
                }
                return HostCertificate {
                    host,
                    source: Some(CertSource::Acme),
                    cert,
                    note,
                };
            }
            if cfg.tls.self_signed {
                return HostCertificate {
                    host,
                    source: Some(CertSource::SelfSigned),
                    cert: None,
                    note: Some("generated at start".to_owned()),
                };
            }
            HostCertificate {
                host,
                source: None,
                cert: None,
                note: unreadable
                    .or_else(|| Some("no certificate file covers this host".to_owned())),
            }
        })
        .collect()
}
