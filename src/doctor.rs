//! `trackproxy doctor`: the checks people do by hand after setting up SSL click tracking,
//! done by the tool, with a verdict and a one-sentence fix for each.
//!
//! For every branded host (the configured ones, or those given on the command line):
//!
//! 1. **DNS** — the CNAME chain and A/AAAA: ✗ when it still points at the ESP (the host's
//!    upstream, or the tracking host of *any* ESP preset: `sendgrid.net`, `spgo.io`, …)
//!    or does not resolve, ! when it does not reach this proxy (`--expect`, `doctor.expect`).
//! 2. **owner record** — the ESP's ownership record (`SendGrid`'s numeric `12345.example.com`)
//!    must keep pointing at the ESP: ! when it was moved too or is gone.
//! 3. **HTTPS** — TLS handshake with SNI (via DNS, or `--connect`): issuer, names, validity
//!    against the Mozilla roots (plus `--ca-file`), days left; ✗ on mismatch, expiry or an
//!    untrusted issuer, ! under 14 days.
//! 4. **click path** — `GET /wf/open` (or the `--link`, upgraded to `https://`) through the
//!    proxy, redirect not followed: ✓ on the ESP's 2xx/3xx, ✗ on 421/5xx.
//! 5. **app links** — the iOS and Android app-link files through the proxy: ✗ on a redirect,
//!    a wrong type, invalid JSON or shape; ! when the association file does not claim the
//!    ESP's universal-link path; skipped when none is served.
//! 6. **HSTS** — the sender's website (`https://` + the registrable domain, or `--site`):
//!    with `includeSubDomains`, browsers force `https://` on the tracking host too.
//! 7. **CAA** — the record set governing the host (climbing to the registrable domain): ✗ when
//!    it does not allow the CA (`--ca-domain`, default `letsencrypt.org`).
//! 8. **upstream** — TLS and an HTTP answer from the host's upstream, from this machine.
//!
//! Every network step runs under `--timeout` (default 5 s), so no check can hang.
//!
//! The command line hands [`run`] a [`Request`] (plain values, no argument parser here) and
//! turns what comes back into the exit code: [`Outcome::Passed`] or [`Outcome::Failed`] once
//! the report is printed, or an [`Error`] when the request is unusable
//! ([`Error::Usage`]) or the checks could not start.
//!
//! - [`dns`]: resolver, CNAME chains, CAA.
//! - [`probe`]: TCP, TLS and HTTP probes.
//! - [`report`]: the checklist and its JSON form.

mod checks;
pub(crate) mod dns;
pub(crate) mod probe;
pub(crate) mod report;

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

use crate::config::{self, Config, Expect, UpstreamUrl};
use probe::{Prober, RootsError};
use report::Report;

/// Default of `--ca-domain`: Let's Encrypt's CAA identifier.
pub(crate) const DEFAULT_CA_DOMAIN: &str = "letsencrypt.org";

/// What to check and how: the options of `trackproxy doctor`, as given. [`run`] validates
/// them against the configuration; the flag each field comes from is named in brackets.
#[derive(Debug, Clone)]
pub struct Request {
    /// Branded hosts to check, as given (`HOST…`); empty: the `--link` host, or every
    /// configured host.
    pub hosts: Vec<String>,
    /// Print the report as JSON instead of a checklist (`--json`).
    pub json: bool,
    /// DNS server for every lookup (`--dns-server`); `None`: the system's.
    pub dns_server: Option<SocketAddr>,
    /// This proxy's public name or address (`--expect`); `None`: `doctor.expect`.
    pub expect: Option<String>,
    /// Fixed address for the HTTPS and click checks (`--connect`).
    pub connect: Option<SocketAddr>,
    /// Extra PEM roots to trust (`--ca-file`).
    pub ca_file: Option<PathBuf>,
    /// A tracked link to request (`--link`).
    pub link: Option<String>,
    /// The sender's website whose HSTS is checked (`--site`).
    pub site: Option<String>,
    /// The ESP's ownership record (`--owner-record`); `None`: `hosts[].owner_record`.
    pub owner_record: Option<String>,
    /// The CA that CAA must allow (`--ca-domain`); `None`: see [`ca_domain`].
    pub ca_domain: Option<String>,
    /// Limit per network step (`--timeout`).
    pub timeout: Duration,
}

/// How the checks went, once the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No check failed (warnings allowed).
    Passed,
    /// At least one check failed.
    Failed,
}

/// Why the checks did not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A value of the request is unusable.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The async runtime could not be started.
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    /// The DNS resolver could not be set up.
    #[error(transparent)]
    Dns(#[from] dns::SetupError),
}

/// A request value the doctor cannot use.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UsageError {
    /// A `HOST` argument is not a host name.
    #[error("{0:?} is not a host name")]
    Host(String),
    /// `--expect` is neither a name nor an address.
    #[error("--expect {0:?} is neither a host name nor an IP address")]
    Expect(String),
    /// `--owner-record` is not a host name.
    #[error("--owner-record {0:?} is not a host name")]
    OwnerRecord(String),
    /// `--ca-domain` is not a domain name.
    #[error("--ca-domain {0:?} is not a domain name such as letsencrypt.org")]
    CaDomain(String),
    /// `--link` or `--site` is not a usable URL.
    #[error("{flag} {url:?}: {why}")]
    Url {
        /// Which option.
        flag: &'static str,
        /// The value.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// `--link` or `--site` does not parse as a URL.
    #[error("{flag} {url:?} is not a valid URL")]
    UrlSyntax {
        /// Which option.
        flag: &'static str,
        /// The value.
        url: String,
        /// Why.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// `--link` names a host that is not among those checked.
    #[error("--link names {link_host}, which is not among the hosts checked ({hosts})")]
    LinkHost {
        /// The link's host.
        link_host: String,
        /// The hosts checked.
        hosts: String,
    },
    /// A CA file is unusable.
    #[error(transparent)]
    Roots(#[from] RootsError),
}

/// One branded host to check.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The branded host, lower case.
    pub name: String,
    /// Its upstream (from its `[[hosts]]` entry, or `[upstream] url`).
    pub upstream: UpstreamUrl,
    /// The ESP's ownership record for it, if known.
    pub owner_record: Option<String>,
    /// Its ESP preset (from its `[[hosts]]` entry, or `upstream.esp`).
    pub esp: &'static config::Esp,
}

/// A URL split into what the probes need.
#[derive(Debug, Clone)]
pub(crate) struct WebUrl {
    /// Host name or IP literal (no brackets), lower case.
    pub host: String,
    /// Port (default for the scheme when absent).
    pub port: u16,
    /// `Host` header value (the URL's authority).
    pub authority: String,
    /// Path and query, byte for byte (at least `/`).
    pub target: String,
}

impl WebUrl {
    /// Parses an `http://` or `https://` URL.
    fn parse(flag: &'static str, url: &str) -> Result<WebUrl, UsageError> {
        let bad = |why| UsageError::Url {
            flag,
            url: url.to_owned(),
            why,
        };
        let uri: Uri = url.trim().parse().map_err(|source| UsageError::UrlSyntax {
            flag,
            url: url.to_owned(),
            source,
        })?;
        let default_port = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => 443,
            Some(s) if s.eq_ignore_ascii_case("http") => 80,
            _ => return Err(bad("must start with https:// or http://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("must not contain credentials"));
        }
        Ok(WebUrl {
            host: authority
                .host()
                .trim_matches(['[', ']'])
                .to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(default_port),
            authority: authority.as_str().to_ascii_lowercase(),
            target: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// Everything the checks need, validated.
#[derive(Debug)]
pub(crate) struct Options {
    /// Hosts to check, in order.
    pub targets: Vec<Target>,
    /// Print JSON.
    pub json: bool,
    /// DNS server for every lookup.
    pub dns_server: Option<SocketAddr>,
    /// Where each host's DNS should lead.
    pub expect: Option<Expect>,
    /// Fixed address for the HTTPS and click checks.
    pub connect: Option<SocketAddr>,
    /// The tracked link's path and query (its host is one of the targets).
    pub link: Option<WebUrl>,
    /// The sender's website, when given.
    pub site: Option<WebUrl>,
    /// The CA that CAA must allow.
    pub ca_domain: String,
    /// Limit per network step.
    pub timeout: Duration,
    /// Verifies the branded hosts and the website (Mozilla roots + `--ca-file`).
    pub prober: Prober,
    /// Verifies the upstreams (Mozilla roots + `upstream.ca_file` + `--ca-file`), like the
    /// proxy does.
    pub upstream_prober: Prober,
}

impl Options {
    /// Validates `request` against `cfg`.
    ///
    /// # Errors
    /// The first unusable value.
    pub(crate) fn new(request: &Request, cfg: &Config) -> Result<Options, UsageError> {
        let link = request
            .link
            .as_deref()
            .map(|l| WebUrl::parse("--link", l))
            .transpose()?;
        let site = request
            .site
            .as_deref()
            .map(|s| WebUrl::parse("--site", s))
            .transpose()?;
        let owner_flag = request
            .owner_record
            .as_deref()
            .map(|o| {
                config::normalize_host_name(o).ok_or_else(|| UsageError::OwnerRecord(o.to_owned()))
            })
            .transpose()?;
        let mut targets = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for h in &request.hosts {
            names.push(config::normalize_host_name(h).ok_or_else(|| UsageError::Host(h.clone()))?);
        }
        if names.is_empty() {
            // A link alone says which host to check.
            names = match &link {
                Some(l) => vec![l.host.clone()],
                None => cfg.hosts.iter().map(|h| h.name.clone()).collect(),
            };
        }
        for name in names {
            let configured = cfg.hosts.iter().find(|h| h.name == name);
            targets.push(Target {
                upstream: configured
                    .map_or_else(|| cfg.upstream.url.clone(), |h| h.upstream.clone()),
                owner_record: owner_flag
                    .clone()
                    .or_else(|| configured.and_then(|h| h.owner_record.clone())),
                esp: configured.map_or(cfg.upstream.esp, |h| h.esp),
                name,
            });
        }
        if let Some(l) = &link
            && !targets.iter().any(|t| t.name == l.host)
        {
            return Err(UsageError::LinkHost {
                link_host: l.host.clone(),
                hosts: targets
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let expect = match &request.expect {
            Some(e) => Some(Expect::parse(e).ok_or_else(|| UsageError::Expect(e.clone()))?),
            None => cfg.doctor.expect.clone(),
        };
        let ca_domain = ca_domain(cfg, request.ca_domain.as_deref())?;
        let extra: Vec<&Path> = request.ca_file.as_deref().into_iter().collect();
        let mut upstream_extra: Vec<&Path> = cfg.upstream.ca_file.as_deref().into_iter().collect();
        upstream_extra.extend(&extra);
        Ok(Options {
            targets,
            json: request.json,
            dns_server: request.dns_server,
            expect,
            connect: request.connect,
            link,
            site,
            ca_domain,
            timeout: request.timeout,
            prober: Prober::new(probe::roots(&extra)?, request.timeout)?,
            upstream_prober: Prober::new(probe::roots(&upstream_extra)?, request.timeout)?,
        })
    }
}

/// The CA whose issuance CAA records must allow: `--ca-domain` when given, else the CA of the
/// configuration's ACME directory when it is a known one, else [`DEFAULT_CA_DOMAIN`].
///
/// # Errors
/// When the flag is not a domain name.
pub(crate) fn ca_domain(cfg: &Config, flag: Option<&str>) -> Result<String, UsageError> {
    if let Some(f) = flag {
        return config::normalize_host_name(f).ok_or_else(|| UsageError::CaDomain(f.to_owned()));
    }
    // The CA that orders this proxy's certificates, when it is a well-known one; otherwise
    // (file certificates, a private ACME CA) Let's Encrypt, unless --ca-domain says better.
    let known = cfg
        .tls
        .acme
        .as_ref()
        .and_then(|a| ca_domain_for_directory(a.directory.as_str()));
    Ok(known.unwrap_or(DEFAULT_CA_DOMAIN).to_owned())
}

/// The CAA issuer domain of a well-known ACME directory URL, e.g.
/// `https://acme-v02.api.letsencrypt.org/directory` → `letsencrypt.org`.
#[must_use]
pub(crate) fn ca_domain_for_directory(directory: &str) -> Option<&'static str> {
    let uri: Uri = directory.parse().ok()?;
    let host = uri.host()?.to_ascii_lowercase();
    let under = |d: &str| host == d || host.ends_with(&format!(".{d}"));
    [
        ("letsencrypt.org", "letsencrypt.org"),
        ("zerossl.com", "sectigo.com"),
        ("pki.goog", "pki.goog"),
        ("buypass.com", "buypass.com"),
        ("ssl.com", "ssl.com"),
        ("digicert.com", "digicert.com"),
    ]
    .into_iter()
    .find(|(d, _)| under(d))
    .map(|(_, ca)| ca)
}

/// Runs `trackproxy doctor`: validates `request` against `cfg`, runs every check, prints the
/// report (to stdout) and says whether a check failed.
///
/// # Errors
/// When a request value is unusable, or the checks could not start; nothing is printed.
pub(crate) fn run(request: &Request, cfg: &Config) -> Result<Outcome, Error> {
    let opts = Options::new(request, cfg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let report = runtime.block_on(check_all(&opts))?;
    let text = if opts.json {
        report.to_json() + "\n"
    } else {
        report.to_text()
    };
    // A closed pipe (`trackproxy doctor | head`) is not worth a panic.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(if report.ok {
        Outcome::Passed
    } else {
        Outcome::Failed
    })
}

/// Runs every check for every target, one host after the other.
///
/// # Errors
/// When the DNS resolver cannot be set up.
pub(crate) async fn check_all(opts: &Options) -> Result<Report, dns::SetupError> {
    let dns = dns::Dns::new(opts.dns_server, opts.timeout)?;
    let mut hosts = Vec::new();
    for t in &opts.targets {
        hosts.push(checks::host(opts, &dns, t).await);
    }
    Ok(Report::new(hosts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_directories_map_to_caa_domains() {
        assert_eq!(
            ca_domain_for_directory("https://acme-v02.api.letsencrypt.org/directory"),
            Some("letsencrypt.org")
        );
        assert_eq!(
            ca_domain_for_directory("https://acme-staging-v02.api.letsencrypt.org/directory"),
            Some("letsencrypt.org")
        );
        assert_eq!(
            ca_domain_for_directory("https://acme.zerossl.com/v2/DV90"),
            Some("sectigo.com")
        );
        assert_eq!(ca_domain_for_directory("https://127.0.0.1:14000/dir"), None);
    }

    #[test]
    fn caa_domain_follows_the_configured_acme_directory() {
        let cache = tempfile::tempdir().unwrap();
        let toml = |dir: &str| {
            format!(
                "[[hosts]]\nname = \"url1.example.com\"\n[tls.acme]\ndirectory = \"{dir}\"\n\
                 cache_dir = {:?}\n",
                cache.path().display().to_string()
            )
        };
        let load = |t: &str| {
            config::load_with_env(
                &config::Source::Text {
                    label: "t",
                    toml: t,
                },
                Some(::config::Map::new()),
            )
            .unwrap()
        };
        let zerossl = load(&toml("https://acme.zerossl.com/v2/DV90"));
        assert_eq!(ca_domain(&zerossl, None).unwrap(), "sectigo.com");
        assert_eq!(
            ca_domain(&zerossl, Some("digicert.com")).unwrap(),
            "digicert.com"
        );
        let private = load(&toml(
            "https://ca.internal.example:9000/acme/acme/directory",
        ));
        assert_eq!(ca_domain(&private, None).unwrap(), DEFAULT_CA_DOMAIN);
    }

    #[test]
    fn urls_keep_their_target_byte_for_byte() {
        let u = WebUrl::parse("--link", "http://URL1.example.com/ls/click?upn=a%2Fb_c-").unwrap();
        assert_eq!(u.host, "url1.example.com");
        assert_eq!(u.port, 80);
        assert_eq!(u.target, "/ls/click?upn=a%2Fb_c-");
        let u = WebUrl::parse("--site", "https://example.com:8443").unwrap();
        assert_eq!((u.port, u.target.as_str()), (8443, "/"));
        assert_eq!(u.authority, "example.com:8443");
        assert!(WebUrl::parse("--site", "ftp://example.com/").is_err());
        assert!(WebUrl::parse("--site", "example.com").is_err());
    }
}
