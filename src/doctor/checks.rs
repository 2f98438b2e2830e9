//! The eight checks of one host. Each returns a [`Check`] with a verdict, the evidence seen
//! and a one-sentence fix; none returns early on an error: a failure is a finding.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use http::StatusCode;
use rustls::CertificateError;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::dns::{self, Dns, End, Resolution};
use super::probe::{self, Presented, ProbeError};
use super::report::{Check, HostReport, Status, Step};
use super::{Options, Target, WebUrl};
use crate::config::Expect;

/// A certificate with fewer days left than this gets a warning.
const RENEW_WARNING_DAYS: u64 = 14;

/// Runs the checks of `t` in order.
pub(super) async fn host(opts: &Options, dns: &Dns, t: &Target) -> HostReport {
    let esp = esp_domain(t.upstream.authority.host());
    let (dns_check, resolution) = dns_check(opts, dns, t, &esp).await;
    let owner = owner_check(dns, t, &esp).await;
    let (https, verified) = https_check(opts, t, resolution.as_ref()).await;
    let https_ok = matches!(https.status, Status::Ok | Status::Warn);
    let verified_addr = verified.as_ref().map(|(addr, _)| *addr);
    let click = click_check(opts, t, verified).await;
    let app_links = app_links_check(opts, t, verified_addr).await;
    let hsts = hsts_check(opts, dns, t, https_ok).await;
    let caa = caa_check(opts, dns, t).await;
    let upstream = upstream_check(opts, dns, t).await;
    HostReport {
        host: t.name.clone(),
        checks: vec![
            dns_check, owner, https, click, app_links, hsts, caa, upstream,
        ],
    }
}

/// The domain that identifies the ESP: the registrable domain of the upstream host
/// (`eu.sendgrid.net` → `sendgrid.net`), or the host itself.
fn esp_domain(upstream_host: &str) -> String {
    let host = dns::normalize(upstream_host.trim_matches(['[', ']']));
    if host.parse::<IpAddr>().is_ok() {
        return host;
    }
    psl::domain_str(&host).map_or_else(|| host.clone(), str::to_owned)
}

/// `name` is `domain` or under it.
fn within(name: &str, domain: &str) -> bool {
    name == domain
        || name
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// The registrable domain of `host` (`url1.example.co.uk` → `example.co.uk`).
fn registrable(host: &str) -> Option<String> {
    psl::domain_str(host).map(str::to_owned)
}

fn expect_hint(opts: &Options) -> String {
    opts.expect.as_ref().map_or_else(
        || "this proxy's public host name".to_owned(),
        ToString::to_string,
    )
}

// ---- 1. DNS -------------------------------------------------------------------------------

async fn dns_check(
    opts: &Options,
    dns: &Dns,
    t: &Target,
    esp: &str,
) -> (Check, Option<Resolution>) {
    let host = &t.name;
    let r = match dns.resolve(host).await {
        Ok(r) => r,
        Err(e) => {
            let c = Check::new(
                Step::Dns,
                Status::Fail,
                format!("{host} could not be looked up"),
            )
            .evidence(probe::chain(&e))
            .evidence(format!("DNS servers asked: {}", dns.servers))
            .fix(format!(
                "Make sure your DNS answers for {host} (or pass --dns-server with a resolver \
                     that works)."
            ));
            return (c, None);
        }
    };
    let evidence = r.describe();
    let target = expect_hint(opts);
    if let Some(at) = r.chain.iter().skip(1).find(|n| within(n, esp)) {
        let c = Check::new(
            Step::Dns,
            Status::Fail,
            format!("{host} still points at the ESP ({at}), not at this proxy"),
        )
        .evidence(evidence)
        .fix(format!(
            "Change the CNAME of {host} from {at} to {target}; leave the numeric ownership \
             record pointing at {esp}."
        ));
        return (c, Some(r));
    }
    // Any ESP's tracking host, not only this host's upstream: a host configured for one ESP
    // whose DNS still leads to another (or to the ESP while the proxy forwards elsewhere).
    if let Some((at, found)) = r
        .chain
        .iter()
        .skip(1)
        .find_map(|n| crate::config::esp::by_tracking_host(n).map(|e| (n, e)))
    {
        let configured = if found.tracking_hosts == t.esp.tracking_hosts {
            String::new()
        } else {
            format!(" (this host is configured for {})", t.esp.title)
        };
        let c = Check::new(
            Step::Dns,
            Status::Fail,
            format!(
                "{host} still points at {} ({at}), not at this proxy{configured}",
                found.title
            ),
        )
        .evidence(evidence)
        .fix(format!(
            "Point the first CNAME, {host}, at {target} instead of {at}; do not re-verify the \
             branding at the ESP afterwards, and leave the ownership record pointing at {at}."
        ));
        return (c, Some(r));
    }
    let broken = |summary: String| {
        Check::new(Step::Dns, Status::Fail, summary)
            .evidence(evidence.clone())
            .fix(format!("Create a CNAME record {host} → {target}."))
    };
    let last = r.chain.last().cloned().unwrap_or_default();
    let check = match &r.end {
        End::NxDomain if r.chain.len() == 1 => broken(format!("{host} does not exist (NXDOMAIN)")),
        End::NxDomain => broken(format!("{host} points at {last}, which does not exist")),
        End::NoAddress => broken(format!("{last} has no A or AAAA record")),
        End::TooLong => broken(format!("the CNAME chain of {host} is too long or loops")),
        End::Addrs(addrs) => expect_check(opts, dns, host, &r, addrs, evidence.clone()).await,
    };
    (check, Some(r))
}

async fn expect_check(
    opts: &Options,
    dns: &Dns,
    host: &str,
    r: &Resolution,
    addrs: &[IpAddr],
    evidence: String,
) -> Check {
    let reached = |summary: String| Check::new(Step::Dns, Status::Ok, summary);
    let missed = |summary: String, expect: &Expect| {
        Check::new(Step::Dns, Status::Warn, summary).fix(format!(
            "Point {host} at this proxy: a CNAME to {expect} (or its address)."
        ))
    };
    match &opts.expect {
        None => reached(format!("{host} resolves and does not point at the ESP"))
            .evidence(evidence)
            .evidence("not compared with this proxy's address: set doctor.expect or --expect"),
        Some(Expect::Ip(ip)) if addrs.contains(ip) => {
            reached(format!("{host} reaches this proxy ({ip})")).evidence(evidence)
        }
        Some(e @ Expect::Ip(ip)) => {
            missed(format!("{host} does not reach this proxy ({ip})"), e).evidence(evidence)
        }
        Some(Expect::Name(n)) if r.chain.contains(n) => {
            reached(format!("{host} reaches this proxy ({n})")).evidence(evidence)
        }
        Some(e @ Expect::Name(n)) => match dns.addrs(n).await {
            Ok(theirs) if theirs.iter().any(|a| addrs.contains(a)) => reached(format!(
                "{host} reaches this proxy's address (the address of {n})"
            ))
            .evidence(evidence),
            Ok(theirs) => {
                let list: Vec<String> = theirs.iter().map(ToString::to_string).collect();
                missed(format!("{host} does not reach this proxy ({n})"), e)
                    .evidence(evidence)
                    .evidence(format!("{n} → {}", list.join(", ")))
            }
            Err(err) => missed(format!("{host} does not reach this proxy ({n})"), e)
                .evidence(evidence)
                .evidence(probe::chain(&err)),
        },
    }
}

// ---- 2. the ESP's ownership record -------------------------------------------------------

async fn owner_check(dns: &Dns, t: &Target, esp: &str) -> Check {
    let Some(owner) = &t.owner_record else {
        return Check::new(
            Step::OwnerRecord,
            Status::Skip,
            "not checked: name the ESP's ownership record (SendGrid's numeric CNAME, e.g. \
             12345.example.com) with --owner-record or hosts[].owner_record",
        );
    };
    let r = match dns.resolve(owner).await {
        Ok(r) => r,
        Err(e) => {
            return Check::new(
                Step::OwnerRecord,
                Status::Warn,
                format!("{owner} could not be looked up"),
            )
            .evidence(probe::chain(&e))
            .fix(format!("Make sure {owner} is a CNAME to {esp}."));
        }
    };
    let evidence = r.describe();
    // Checked against the host's ESP: its upstream's domain or one of the tracking hosts of
    // its preset (the upstream may be a relay or, in tests, a stand-in).
    if let Some(at) = r
        .chain
        .iter()
        .skip(1)
        .find(|n| within(n, esp) || t.esp.is_tracking_host(n))
    {
        return Check::new(
            Step::OwnerRecord,
            Status::Ok,
            format!("{owner} still points at the ESP ({at})"),
        )
        .evidence(evidence);
    }
    let (summary, verb) = if r.chain.len() == 1 && r.end == End::NxDomain {
        (format!("{owner} does not exist"), "Create")
    } else {
        (
            format!("{owner} no longer points at the ESP ({esp})"),
            "Restore",
        )
    };
    Check::new(Step::OwnerRecord, Status::Warn, summary)
        .evidence(evidence)
        .fix(format!(
            "{verb} the CNAME {owner} → {esp}: the ESP validates the link branding with it; \
             only {} moves to the proxy.",
            t.name
        ))
}

// ---- 3. HTTPS -------------------------------------------------------------------------

type Verified = Option<(SocketAddr, TlsStream<TcpStream>)>;

async fn https_check(
    opts: &Options,
    t: &Target,
    resolution: Option<&Resolution>,
) -> (Check, Verified) {
    let host = &t.name;
    let addrs: Vec<SocketAddr> = match opts.connect {
        Some(a) => vec![a],
        None => resolution
            .map(|r| {
                r.addrs()
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, 443))
                    .collect()
            })
            .unwrap_or_default(),
    };
    if addrs.is_empty() {
        let check = Check::new(
            Step::Https,
            Status::Skip,
            format!(
                "not tried: {host} has no address (see DNS); --connect IP:PORT tests a \
                 server directly"
            ),
        );
        return (check, None);
    }
    let (presented, stream) = match opts.prober.tls(&addrs, host).await {
        Ok(x) => x,
        Err(e) => return (connect_failure(Step::Https, host, &e), None),
    };
    let check = judge_certificate(host, &presented);
    let verified = presented
        .verified
        .is_ok()
        .then_some((presented.addr, stream));
    (check, verified)
}

/// The verdict on what a branded host presented.
fn judge_certificate(host: &str, presented: &Presented) -> Check {
    let base = describe_certificate(presented);
    let names = presented
        .leaf
        .as_ref()
        .map(|l| l.names.join(", "))
        .unwrap_or_default();
    let days = presented.leaf.as_ref().map(|l| remaining(l.not_after));
    let fail = |summary: String, fix: String| {
        Check {
            status: Status::Fail,
            summary,
            ..base.clone()
        }
        .fix(fix)
    };
    let rejected = |e: &dyn std::fmt::Display| {
        fail(
            format!("the certificate was rejected: {e}"),
            format!("Serve a valid certificate chain for {host} from a public CA."),
        )
    };
    let cert_error = match &presented.verified {
        Ok(()) => {
            return match days {
                Some(Remaining::Left(d)) if d < RENEW_WARNING_DAYS => Check {
                    status: Status::Warn,
                    summary: format!("valid certificate, but it expires in {d} days"),
                    ..base
                }
                .fix(format!(
                    "Renew the certificate for {host} now (ACME renews 30 days ahead: check \
                     trackproxy's log for failed renewals)."
                )),
                _ => Check {
                    summary: format!(
                        "valid certificate for {host}{}",
                        match days {
                            Some(Remaining::Left(d)) => format!(", {d} days left"),
                            _ => String::new(),
                        }
                    ),
                    ..base
                },
            };
        }
        Err(rustls::Error::InvalidCertificate(ce)) => ce,
        Err(other) => return rejected(other),
    };
    match cert_error {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => fail(
            format!(
                "the certificate expired{}",
                days.and_then(|d| match d {
                    Remaining::Ago(d) => Some(format!(" {d} days ago")),
                    Remaining::Left(_) => None,
                })
                .unwrap_or_default()
            ),
            format!(
                "Install a renewed certificate for {host} and reload trackproxy (SIGHUP or \
                 restart)."
            ),
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => fail(
            "the certificate is not valid yet".into(),
            "Check the clock of the server and of this machine.".into(),
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            fail(
                format!("the certificate is not valid for {host} (it names: {names})"),
                format!(
                    "Serve a certificate whose subjectAltName includes {host} (and check that \
                     DNS or --connect leads to the right server)."
                ),
            )
        }
        CertificateError::UnknownIssuer => fail(
            "the certificate is not signed by a trusted CA".into(),
            "Use a certificate from a public CA (ACME, e.g. Let's Encrypt) and serve the full \
             chain; for a private CA pass --ca-file."
                .into(),
        ),
        other => rejected(other),
    }
}

fn describe_certificate(p: &Presented) -> Check {
    let mut c = Check::new(Step::Https, Status::Ok, String::new()).evidence(format!(
        "{} answered, {}, {} certificate{} sent",
        p.addr,
        p.version,
        p.chain_len,
        if p.chain_len == 1 { "" } else { "s" }
    ));
    if let Some(l) = &p.leaf {
        c = c
            .evidence(format!("issuer: {}", l.issuer))
            .evidence(format!("names: {}", l.names.join(", ")))
            .evidence(format!(
                "valid until {} ({})",
                humantime::format_rfc3339_seconds(l.not_after),
                match remaining(l.not_after) {
                    Remaining::Ago(d) => format!("expired {d} days ago"),
                    Remaining::Left(d) => format!("{d} days left"),
                }
            ));
    }
    if let Err(e) = &p.verified {
        c = c.evidence(format!("verification: {e}"));
    }
    c
}

/// Whole days left until `t`, or whole days since `t` once it has passed (both rounded down,
/// so a certificate that expired three and a half days ago expired "3 days ago").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remaining {
    Left(u64),
    Ago(u64),
}

fn remaining(t: SystemTime) -> Remaining {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => Remaining::Left(d.as_secs() / 86_400),
        Err(e) => Remaining::Ago(e.duration().as_secs() / 86_400),
    }
}

fn connect_failure(step: Step, host: &str, e: &ProbeError) -> Check {
    let (summary, fix) = match e {
        ProbeError::Connect { addr, .. } => (
            format!("nothing accepts connections at {addr}"),
            format!("Start trackproxy there and open the port to the internet for {host}."),
        ),
        ProbeError::Timeout { step, addr, .. } => (
            format!("{addr} did not answer in time ({step})"),
            "Check firewalls and that the server is up and not overloaded.".to_owned(),
        ),
        ProbeError::Handshake { addr, .. } => (
            format!("{addr} refused the TLS handshake for {host}"),
            format!(
                "Add {host} to the [[hosts]] of the trackproxy at {addr}, with a certificate \
                 that covers it."
            ),
        ),
        other => (
            other.to_string(),
            format!("Make sure {host} answers HTTPS with a valid certificate."),
        ),
    };
    Check::new(step, Status::Fail, summary)
        .evidence(probe::chain(e))
        .fix(fix)
}

// ---- 4. the click path ------------------------------------------------------------------

async fn click_check(opts: &Options, t: &Target, verified: Verified) -> Check {
    let host = &t.name;
    let target = opts
        .link
        .as_ref()
        .map_or_else(|| "/wf/open".to_owned(), |l| l.target.clone());
    let url = format!("https://{host}{target}");
    let Some((addr, stream)) = verified else {
        return Check::new(
            Step::ClickPath,
            Status::Skip,
            format!("not tried: clients stop at the HTTPS problem above ({url})"),
        );
    };
    let answer = match opts.prober.get(stream, addr, host, &target).await {
        Ok(a) => a,
        Err(e) => {
            return Check::new(
                Step::ClickPath,
                Status::Fail,
                format!("no answer to GET {url}"),
            )
            .evidence(probe::chain(&e))
            .fix("Look for this request in trackproxy's log.");
        }
    };
    let s = answer.status;
    let mut c = Check::new(Step::ClickPath, Status::Ok, String::new())
        .evidence(format!("GET {url} via {addr} → {s}"));
    for h in ["server", "location", "content-type"] {
        if let Some(v) = answer.header(h) {
            c = c.evidence(format!("{h}: {v}"));
        }
    }
    let upstream = &t.upstream;
    if s.is_success() || s.is_redirection() {
        let what = if s.is_redirection() {
            format!(
                "redirect to {} (not followed)",
                answer.header("location").unwrap_or("?")
            )
        } else {
            s.to_string()
        };
        Check {
            summary: format!("{url} answers through the proxy: {what}"),
            ..c
        }
    } else if s == StatusCode::MISDIRECTED_REQUEST {
        Check {
            status: Status::Fail,
            summary: format!("{addr} does not serve {host} (421 Misdirected Request)"),
            ..c
        }
        .fix(format!(
            "Add {host} to [[hosts]] in trackproxy's configuration."
        ))
    } else if s == StatusCode::BAD_GATEWAY || s == StatusCode::GATEWAY_TIMEOUT {
        Check {
            status: Status::Fail,
            summary: format!("the proxy could not get an answer from {upstream} ({s})"),
            ..c
        }
        .fix(format!(
            "Make sure the proxy's server can reach {upstream} (see the upstream check and \
             trackproxy's log)."
        ))
    } else if s.is_server_error() {
        Check {
            status: Status::Fail,
            summary: format!("{url} fails with {s}"),
            ..c
        }
        .fix("Look for this request in trackproxy's log.")
    } else {
        Check {
            status: Status::Warn,
            summary: format!("{url} answers {s}"),
            ..c
        }
        .fix("Try a real tracked link from a recent email with --link URL.")
    }
}

// ---- 4b. app-link files --------------------------------------------------------------------

/// Where iOS (twice: the well-known path first) and Android fetch the app-link files.
const APP_LINK_PATHS: [(&str, AppLinkFile); 3] = [
    (
        "/.well-known/apple-app-site-association",
        AppLinkFile::AppleAppSiteAssociation,
    ),
    (
        "/apple-app-site-association",
        AppLinkFile::AppleAppSiteAssociation,
    ),
    ("/.well-known/assetlinks.json", AppLinkFile::AssetLinks),
];

/// Apple's limit for an `apple-app-site-association` file.
const AASA_MAX_BYTES: usize = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppLinkFile {
    AppleAppSiteAssociation,
    AssetLinks,
}

/// What one app-link URL answered, judged.
#[derive(Debug, PartialEq, Eq)]
enum AppLinkFinding {
    /// 404 (or an answer that is not JSON at all): not served (fine: the sender's app does not
    /// use links on this host).
    Absent,
    /// 200, `application/json`, a file of the right shape; the paths it claims (AASA).
    Good { claimed: Vec<String> },
    /// Served, but a client would reject it.
    Bad(String),
}

async fn app_links_check(opts: &Options, t: &Target, addr: Option<SocketAddr>) -> Check {
    let host = &t.name;
    let Some(addr) = addr else {
        return Check::new(
            Step::AppLinks,
            Status::Skip,
            "not tried: clients stop at the HTTPS problem above",
        );
    };
    let mut c = Check::new(Step::AppLinks, Status::Ok, String::new());
    let mut bad = Vec::new();
    let mut served = Vec::new();
    let mut claimed = Vec::new();
    for (path, kind) in APP_LINK_PATHS {
        let url = format!("https://{host}{path}");
        let fetched = match opts.prober.tls(&[addr], host).await {
            Ok((_, stream)) => {
                opts.prober
                    .fetch(stream, addr, host, path, AASA_MAX_BYTES)
                    .await
            }
            Err(e) => Err(e),
        };
        let finding = match fetched {
            Ok((answer, body)) => {
                c = c.evidence(format!(
                    "GET {url} → {} ({} bytes{})",
                    answer.status,
                    body.len(),
                    answer
                        .header("content-type")
                        .map(|v| format!(", content-type: {v}"))
                        .unwrap_or_default()
                ));
                judge_app_link(kind, &answer, &body)
            }
            Err(e) => AppLinkFinding::Bad(format!("no answer ({})", probe::chain(&e))),
        };
        match finding {
            AppLinkFinding::Absent => {}
            AppLinkFinding::Good { claimed: paths } => {
                served.push(path);
                claimed.extend(paths);
            }
            AppLinkFinding::Bad(why) => bad.push(format!("{path}: {why}")),
        }
    }
    if !bad.is_empty() {
        return Check {
            status: Status::Fail,
            summary: format!(
                "app-link files on {host} would be rejected: {}",
                bad.join("; ")
            ),
            ..c
        }
        .fix(
            "Serve the files from the proxy with [[hosts]] files = \"DIR\" (200, \
             application/json, no redirect), with valid JSON: apple-app-site-association at most \
             128 KB, assetlinks.json a list.",
        );
    }
    if served.is_empty() {
        return Check {
            status: Status::Skip,
            summary: format!(
                "{host} serves no app-link files (only needed for universal links / App Links)"
            ),
            ..c
        };
    }
    let aasa_served = served
        .iter()
        .any(|p| p.ends_with("apple-app-site-association"));
    if let (true, Some(pattern)) = (aasa_served, t.esp.universal_links)
        && !claimed.iter().any(|p| claims(p, pattern))
    {
        return Check {
            status: Status::Warn,
            summary: format!(
                "the apple-app-site-association on {host} does not claim {pattern}, the path \
                 of {}'s universal links",
                t.esp.title
            ),
            ..c
        }
        .evidence(format!("paths claimed: {}", claimed.join(", ")))
        .fix(format!(
            "Add \"{pattern}\" to the paths (or components) of the app's entry in \
             apple-app-site-association."
        ));
    }
    Check {
        summary: format!("{host} serves {}", served.join(", ")),
        ..c
    }
}

/// The verdict on one app-link answer.
fn judge_app_link(kind: AppLinkFile, answer: &probe::Answer, body: &[u8]) -> AppLinkFinding {
    let s = answer.status;
    if s == StatusCode::NOT_FOUND {
        return AppLinkFinding::Absent;
    }
    if s.is_redirection() {
        return AppLinkFinding::Bad(format!(
            "{s} to {}: iOS and Android do not follow redirects for these files",
            answer.header("location").unwrap_or("?")
        ));
    }
    if s != StatusCode::OK {
        return AppLinkFinding::Bad(format!("{s} instead of 200"));
    }
    let ct = answer.header("content-type").unwrap_or("");
    let json_type = ct
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    let parsed = serde_json::from_slice::<serde_json::Value>(body);
    let json = match (json_type, parsed) {
        // Neither labelled nor shaped as JSON: not an app-link file, but whatever the ESP
        // answers for an unknown path. Nobody set up app links on this host.
        (false, Err(_)) => return AppLinkFinding::Absent,
        (false, Ok(_)) => {
            return AppLinkFinding::Bad(format!("content-type {ct:?} instead of application/json"));
        }
        (true, Err(e)) => return AppLinkFinding::Bad(format!("not valid JSON ({e})")),
        (true, Ok(v)) => v,
    };
    if kind == AppLinkFile::AppleAppSiteAssociation && body.len() > AASA_MAX_BYTES {
        return AppLinkFinding::Bad("larger than 128 KB".to_owned());
    }
    match kind {
        AppLinkFile::AssetLinks if !json.is_array() => {
            AppLinkFinding::Bad("assetlinks.json is not a list".to_owned())
        }
        AppLinkFile::AssetLinks => AppLinkFinding::Good {
            claimed: Vec::new(),
        },
        AppLinkFile::AppleAppSiteAssociation => AppLinkFinding::Good {
            claimed: aasa_paths(&json),
        },
    }
}

/// The paths an `apple-app-site-association` claims for universal links: the `paths` of each
/// `applinks.details` entry (older format) and the `/` key of each of its `components` (iOS 13+).
fn aasa_paths(json: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let details = json["applinks"]["details"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    for d in details {
        for p in d["paths"].as_array().map_or(&[][..], Vec::as_slice) {
            if let Some(p) = p.as_str() {
                out.push(p.to_owned());
            }
        }
        for comp in d["components"].as_array().map_or(&[][..], Vec::as_slice) {
            if let Some(p) = comp["/"].as_str()
                && comp["exclude"] != serde_json::Value::Bool(true)
            {
                out.push(p.to_owned());
            }
        }
    }
    out
}

/// Whether a claimed AASA path pattern covers the ESP's universal-link pattern (`/uni/*`):
/// the same pattern, everything (`*`, `/*`), or a wildcard prefix of it.
fn claims(claimed: &str, pattern: &str) -> bool {
    if claimed == pattern || claimed == "*" || claimed == "/*" {
        return true;
    }
    claimed
        .strip_suffix('*')
        .is_some_and(|prefix| pattern.starts_with(prefix))
}

// ---- 5. HSTS of the sender's website --------------------------------------------------

/// The directives of a `Strict-Transport-Security` value (RFC 6797 §6.1).
#[derive(Debug, Default, PartialEq, Eq)]
struct Hsts {
    max_age: Option<u64>,
    include_subdomains: bool,
    preload: bool,
}

fn parse_hsts(value: &str) -> Hsts {
    let mut h = Hsts::default();
    for directive in value.split(';') {
        let (name, val) = directive
            .split_once('=')
            .map_or((directive, ""), |(n, v)| (n, v));
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "max-age" => h.max_age = val.trim().trim_matches('"').parse().ok(),
            "includesubdomains" => h.include_subdomains = true,
            "preload" => h.preload = true,
            _ => {}
        }
    }
    h
}

/// What the website answered: the evidence line and its HSTS header, or a finished check
/// when it could not be fetched.
async fn fetch_site(
    opts: &Options,
    dns: &Dns,
    site: &WebUrl,
    url: &str,
) -> Result<(String, Option<String>), Check> {
    let unknown = |summary: String, e: Option<&dyn std::error::Error>| {
        let c = Check::new(Step::Hsts, Status::Warn, summary);
        let c = match e {
            Some(e) => c.evidence(probe::chain(e)),
            None => c,
        };
        c.fix("Pass your website's address with --site URL to check its HSTS policy.")
    };
    let ips = match dns.addrs(&site.host).await {
        Ok(ips) if !ips.is_empty() => ips,
        Ok(_) => return Err(unknown(format!("{} has no address", site.host), None)),
        Err(e) => {
            return Err(unknown(
                format!("{} could not be looked up", site.host),
                Some(&e),
            ));
        }
    };
    let addrs: Vec<SocketAddr> = ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, site.port))
        .collect();
    let (presented, stream) = match opts.prober.tls(&addrs, &site.host).await {
        Ok(x) => x,
        Err(e) => return Err(unknown(format!("could not reach {url}"), Some(&e))),
    };
    if let Err(e) = &presented.verified {
        return Err(unknown(
            format!("{url} has an invalid certificate: browsers ignore its HSTS header"),
            Some(e),
        ));
    }
    let answer = opts
        .prober
        .get(stream, presented.addr, &site.authority, &site.target)
        .await
        .map_err(|e| unknown(format!("no answer from {url}"), Some(&e)))?;
    Ok((
        format!("GET {url} → {}", answer.status),
        answer
            .header("strict-transport-security")
            .map(str::to_owned),
    ))
}

async fn hsts_check(opts: &Options, dns: &Dns, t: &Target, https_ok: bool) -> Check {
    let host = &t.name;
    let site = match &opts.site {
        Some(s) => s.clone(),
        None => match registrable(host) {
            Some(d) => WebUrl {
                host: d.clone(),
                port: 443,
                authority: d,
                target: "/".into(),
            },
            None => {
                return Check::new(
                    Step::Hsts,
                    Status::Skip,
                    format!("not checked: {host} has no parent website; pass --site URL"),
                );
            }
        },
    };
    let url = format!("https://{}{}", site.authority, site.target);
    let (seen, value) = match fetch_site(opts, dns, &site, &url).await {
        Ok(x) => x,
        Err(check) => return check,
    };
    let Some(value) = value else {
        return Check::new(
            Step::Hsts,
            Status::Ok,
            format!("{url} sends no HSTS: http:// tracking links are not forced to https://"),
        )
        .evidence(seen)
        .evidence("no Strict-Transport-Security header");
    };
    let hsts = parse_hsts(&value);
    let check = |status, summary: String| {
        Check::new(Step::Hsts, status, summary)
            .evidence(seen.clone())
            .evidence(format!("strict-transport-security: {value}"))
    };
    if hsts.max_age == Some(0) {
        return check(Status::Ok, format!("{url} switches HSTS off (max-age=0)"));
    }
    if !hsts.include_subdomains || !within(host, &site.host) {
        return check(
            Status::Ok,
            format!(
                "{url} sends HSTS without includeSubDomains for {host}: tracking links are \
                 not affected"
            ),
        );
    }
    let mut summary = format!(
        "{url} sends HSTS with includeSubDomains{}: browsers that visited it open every \
         http:// tracking link on {host} as https://",
        if hsts.preload { " and preload" } else { "" }
    );
    let mut found = if https_ok {
        check(Status::Warn, summary).fix(format!(
            "Keep SSL click tracking on at the ESP and this proxy serving {host}: for these \
             recipients plain http:// links no longer work without it."
        ))
    } else {
        summary.push_str(", and HTTPS on it is broken (see above): their clicks fail");
        check(Status::Fail, summary).fix(format!(
            "Fix HTTPS for {host} (see the HTTPS check) before anything else."
        ))
    };
    if hsts.preload {
        found = found.evidence(
            "preload: the site asks to be on the browsers' HSTS preload list; once listed, \
             every browser forces https:// on all its subdomains, visit or not (the list \
             itself is not checked)",
        );
    }
    found
}

// ---- 6. CAA ----------------------------------------------------------------------------

async fn caa_check(opts: &Options, dns: &Dns, t: &Target) -> Check {
    let host = &t.name;
    let ca = &opts.ca_domain;
    let apex = registrable(host).unwrap_or_else(|| host.clone());
    match dns.caa(host, &apex).await {
        Err(e) => Check::new(Step::Caa, Status::Warn, "the CAA lookup failed")
            .evidence(probe::chain(&e))
            .fix(format!(
                "CAs refuse to issue while CAA lookups fail: make sure your DNS answers CAA \
                 queries for {host} and its parents."
            )),
        Ok(None) => Check::new(
            Step::Caa,
            Status::Ok,
            format!("no CAA records for {host} or its parents up to {apex}: any CA may issue"),
        ),
        Ok(Some((at, set))) => {
            let mut c = Check::new(Step::Caa, Status::Ok, String::new());
            for r in &set {
                c = c.evidence(format!("{at} CAA {r}"));
            }
            match dns::caa_allowed(&set) {
                None => Check {
                    summary: format!("CAA at {at} does not restrict issuance for {host}"),
                    ..c
                },
                Some(allowed) if allowed.iter().any(|a| a == ca) => Check {
                    summary: format!("CAA at {at} allows {ca}"),
                    ..c
                },
                Some(allowed) => {
                    let who = if allowed.is_empty() {
                        "no CA".to_owned()
                    } else {
                        allowed.join(", ")
                    };
                    Check {
                        status: Status::Fail,
                        summary: format!(
                            "CAA at {at} does not allow {ca} (only {who}): it will refuse to \
                             issue the certificate for {host}"
                        ),
                        ..c
                    }
                    .fix(format!("Add the record {at}. CAA 0 issue \"{ca}\"."))
                }
            }
        }
    }
}

// ---- 7. the upstream ------------------------------------------------------------------

async fn upstream_check(opts: &Options, dns: &Dns, t: &Target) -> Check {
    let up = &t.upstream;
    let name = up.authority.host().trim_matches(['[', ']']).to_owned();
    let tls = up.scheme == http::uri::Scheme::HTTPS;
    let port = up
        .authority
        .port_u16()
        .unwrap_or(if tls { 443 } else { 80 });
    let fix = format!(
        "Allow this machine to resolve and reach {up} (DNS, firewall, outbound proxy): every \
         click is forwarded there."
    );
    let fail = |summary: String, e: &dyn std::error::Error| {
        Check::new(Step::Upstream, Status::Fail, summary)
            .evidence(probe::chain(e))
            .fix(fix.clone())
    };
    let ips = match dns.addrs(&name).await {
        Ok(ips) if !ips.is_empty() => ips,
        Ok(_) => {
            return Check::new(
                Step::Upstream,
                Status::Fail,
                format!("{name} has no address"),
            )
            .fix(fix.clone());
        }
        Err(e) => return fail(format!("{name} could not be looked up"), &e),
    };
    let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
    let prober = &opts.upstream_prober;
    let authority = up.authority.as_str();
    let (answer, mut c) = if tls {
        let (p, stream) = match prober.tls(&addrs, &name).await {
            Ok(x) => x,
            Err(e) => return fail(format!("cannot reach {up}"), &e),
        };
        if let Err(e) = &p.verified {
            return fail(
                format!("{up} presents a certificate this machine does not trust"),
                e,
            )
            .evidence(format!(
                "issuer: {}",
                p.leaf.as_ref().map_or("?", |l| l.issuer.as_str())
            ));
        }
        let c = Check::new(Step::Upstream, Status::Ok, String::new()).evidence(format!(
            "{} answered, {}, issuer: {}",
            p.addr,
            p.version,
            p.leaf.as_ref().map_or("?", |l| l.issuer.as_str())
        ));
        (prober.get(stream, p.addr, authority, "/").await, c)
    } else {
        let (tcp, addr) = match prober.tcp(&addrs).await {
            Ok(x) => x,
            Err(e) => return fail(format!("cannot reach {up}"), &e),
        };
        let c = Check::new(Step::Upstream, Status::Ok, String::new())
            .evidence(format!("{addr} answered (plain HTTP)"));
        (prober.get(tcp, addr, authority, "/").await, c)
    };
    match answer {
        Ok(a) => {
            c = c.evidence(format!("GET {up}/ → {}", a.status));
            if let Some(server) = a.header("server") {
                c = c.evidence(format!("server: {server}"));
            }
            Check {
                summary: format!(
                    "{up} is reachable from this machine{}",
                    if tls { " over verified TLS" } else { "" }
                ),
                ..c
            }
        }
        Err(e) => fail(
            format!("{up} accepted the connection but sent no HTTP answer"),
            &e,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, ct: Option<&str>, location: Option<&str>) -> probe::Answer {
        let mut headers = http::HeaderMap::new();
        if let Some(ct) = ct {
            headers.insert("content-type", ct.parse().unwrap());
        }
        if let Some(l) = location {
            headers.insert("location", l.parse().unwrap());
        }
        probe::Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
        }
    }

    #[test]
    fn app_link_answers_are_judged_as_ios_and_android_do() {
        use AppLinkFile::{AppleAppSiteAssociation as Aasa, AssetLinks};
        let json = Some("application/json");
        let bad = |f: AppLinkFinding| matches!(f, AppLinkFinding::Bad(_));
        assert_eq!(
            judge_app_link(Aasa, &answer(404, None, None), b""),
            AppLinkFinding::Absent
        );
        // The ESP's answer to an unknown path: no app links here.
        assert_eq!(
            judge_app_link(Aasa, &answer(200, Some("text/plain"), None), b"ok 0"),
            AppLinkFinding::Absent
        );
        assert!(bad(judge_app_link(
            AssetLinks,
            &answer(
                301,
                None,
                Some("https://www.example.com/.well-known/assetlinks.json")
            ),
            b""
        )));
        assert!(bad(judge_app_link(
            AssetLinks,
            &answer(500, json, None),
            b"[]"
        )));
        assert!(bad(judge_app_link(
            AssetLinks,
            &answer(200, Some("text/plain"), None),
            b"[]"
        )));
        assert!(bad(judge_app_link(
            AssetLinks,
            &answer(200, json, None),
            b"{not json"
        )));
        assert!(bad(judge_app_link(
            AssetLinks,
            &answer(200, json, None),
            b"{}"
        )));
        assert_eq!(
            judge_app_link(AssetLinks, &answer(200, json, None), b"[]"),
            AppLinkFinding::Good { claimed: vec![] }
        );
        let big = format!("{{\"x\": \"{}\"}}", "a".repeat(AASA_MAX_BYTES));
        assert!(bad(judge_app_link(
            Aasa,
            &answer(200, json, None),
            big.as_bytes()
        )));
        assert_eq!(
            judge_app_link(
                Aasa,
                &answer(200, Some("application/json; charset=utf-8"), None),
                br#"{"applinks": {"details": [{"appID": "T.a", "paths": ["/uni/*"]}]}}"#
            ),
            AppLinkFinding::Good {
                claimed: vec!["/uni/*".to_owned()]
            }
        );
    }

    #[test]
    fn aasa_claims_cover_the_esp_pattern() {
        assert!(claims("/uni/*", "/uni/*"));
        assert!(claims("*", "/uni/*"));
        assert!(claims("/*", "/uni/*"));
        assert!(claims("/u*", "/uni/*"));
        assert!(!claims("/ls/click*", "/uni/*"));
        assert!(!claims("/uni/click", "/uni/*"));
        let old = serde_json::json!({"applinks": {"apps": [], "details": [
            {"appID": "T.app", "paths": ["/uni/*", "NOT /x"]}]}});
        assert_eq!(aasa_paths(&old), ["/uni/*", "NOT /x"]);
        let new = serde_json::json!({"applinks": {"details": [{"appIDs": ["T.app"],
            "components": [{"/": "/f/*"}, {"/": "/q/*", "exclude": true}]}]}});
        assert_eq!(aasa_paths(&new), ["/f/*"]);
    }

    #[test]
    fn hsts_directives() {
        assert_eq!(
            parse_hsts("max-age=31536000; includeSubDomains; preload"),
            Hsts {
                max_age: Some(31_536_000),
                include_subdomains: true,
                preload: true
            }
        );
        assert_eq!(
            parse_hsts("MAX-AGE=\"600\""),
            Hsts {
                max_age: Some(600),
                ..Hsts::default()
            }
        );
        assert_eq!(parse_hsts("max-age=0;includesubdomains").max_age, Some(0));
    }

    #[test]
    fn esp_and_parent_domains() {
        assert_eq!(esp_domain("eu.sendgrid.net"), "sendgrid.net");
        assert_eq!(esp_domain("sendgrid.net"), "sendgrid.net");
        assert_eq!(esp_domain("r.eu-west-1.awstrack.me"), "awstrack.me");
        assert_eq!(esp_domain("127.0.0.1"), "127.0.0.1");
        assert!(within("u123.wl.sendgrid.net", "sendgrid.net"));
        assert!(within("sendgrid.net", "sendgrid.net"));
        assert!(!within("notsendgrid.net", "sendgrid.net"));
        assert_eq!(
            registrable("url1234.example.co.uk").as_deref(),
            Some("example.co.uk")
        );
        assert_eq!(
            registrable("url1234.example.com").as_deref(),
            Some("example.com")
        );
    }

    #[test]
    fn remaining_days_round_down_both_ways() {
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(
            remaining(SystemTime::now() + day * 20 + day / 2),
            Remaining::Left(20)
        );
        assert_eq!(
            remaining(SystemTime::now() - day * 3 - day / 2),
            Remaining::Ago(3)
        );
        assert_eq!(remaining(SystemTime::now() - day / 2), Remaining::Ago(0));
    }
}
