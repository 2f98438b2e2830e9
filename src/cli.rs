//! The command line: `trackproxy serve`, `check-config`, `certs`, `probe`, `doctor`, `init`.
//!
//! Doc comments here are the `--help` text users read, so they are plain prose.
#![allow(clippy::doc_markdown, rustdoc::bare_urls)]

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::App;
use crate::config::{self, Config, Source};
use crate::doctor;
use crate::tls::{self, HostCertificate};

/// Self-hosted HTTPS proxy for email click- and open-tracking link hosts.
///
/// Point your ESP's branded link host (e.g. url1234.example.com for SendGrid) at this server:
/// it terminates TLS for it and forwards every click and open to the ESP, Host, path and query
/// intact.
#[derive(Debug, Parser)]
#[command(name = "trackproxy", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (with no --config: the embedded default, self-signed for localhost).
    Serve(ConfigArg),
    /// Validate a configuration (and its certificate files) and exit: 0 if valid, 64 if not.
    CheckConfig(ConfigArg),
    /// Ask the running proxy's admin listener whether it is healthy (for container health
    /// checks): exit 0 on a 2xx answer, 1 otherwise.
    Probe(ProbeArgs),
    /// Check each branded host's setup from the outside: DNS, the ownership record,
    /// certificate, click path, the website's HSTS, CAA and the upstream. Exit 0 when no check
    /// failed, 1 when one did, 64 on a configuration or usage error.
    Doctor(Box<DoctorArgs>),
    /// List every host with its certificate: source (file, acme, self-signed, missing), issuer,
    /// expiry and days left. Reads the certificate files and the ACME cache (with
    /// `tls.acme.store`, the store: which replica ordered, when, next renewal); starts nothing.
    Certs(ConfigArg),
    /// Write a commented configuration for a new setup: one ESP preset, your branded hosts,
    /// certificates over ACME from Let's Encrypt's staging directory first. Exit 0 when
    /// written, 64 on a usage error (unknown ESP, bad host name, missing --region for ses).
    Init(InitArgs),
}

/// Options of `trackproxy init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The ESP: sendgrid, sendgrid-eu, sparkpost, sparkpost-eu, sparkpost-v2,
    /// sparkpost-v2-eu, mailgun, mailgun-eu, ses, iterable, iterable-eu, customerio,
    /// customerio-eu, mandrill.
    #[arg(long, value_name = "NAME")]
    pub esp: String,
    /// A branded link host (repeat for several).
    #[arg(long = "host", value_name = "HOST", required = true)]
    pub hosts: Vec<String>,
    /// The AWS region of the tracking host r.REGION.awstrack.me (ses only), e.g. us-east-1.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// The e-mail address for the ACME account (expiry notices).
    #[arg(long, value_name = "MAIL")]
    pub acme_contact: Option<String>,
    /// Where ACME keeps the account key and certificates.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/trackproxy/acme")]
    pub acme_cache_dir: PathBuf,
    /// Write to this file (which must not exist yet) instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Options of `trackproxy probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Configuration whose `admin.listen` to ask.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Admin path to request.
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Options of `trackproxy doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Configuration to read the hosts, upstreams and doctor settings from.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Branded hosts to check (default: every configured host).
    #[arg(value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Print the report as JSON instead of a checklist.
    #[arg(long)]
    pub json: bool,
    /// Send every DNS lookup to this server (default: the servers in /etc/resolv.conf).
    #[arg(long, value_name = "IP:PORT")]
    pub dns_server: Option<SocketAddr>,
    /// This proxy's public host name or IP address, which each host's DNS should reach
    /// (default: doctor.expect from the configuration).
    #[arg(long, value_name = "NAME_OR_IP")]
    pub expect: Option<String>,
    /// Connect to this address for the HTTPS and click-path checks instead of the host's DNS
    /// addresses (e.g. to test a new server before moving DNS).
    #[arg(long, value_name = "IP:PORT")]
    pub connect: Option<SocketAddr>,
    /// Extra PEM root certificates to trust besides the built-in (Mozilla) roots, e.g. a
    /// private CA.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// A tracked link from one of your emails (http:// or https://); it is requested over
    /// https:// without following its redirect (default: /wf/open on each host).
    #[arg(long, value_name = "URL")]
    pub link: Option<String>,
    /// The sender's website whose HSTS header is checked (default: https:// and the
    /// registrable domain of each host, e.g. https://example.com/).
    #[arg(long, value_name = "URL")]
    pub site: Option<String>,
    /// The ESP's ownership record that must keep pointing at the ESP, e.g. SendGrid's
    /// 12345.example.com (default: hosts[].owner_record from the configuration).
    #[arg(long, value_name = "NAME")]
    pub owner_record: Option<String>,
    /// The certificate authority that CAA records must allow (default: letsencrypt.org).
    #[arg(long, value_name = "DOMAIN")]
    pub ca_domain: Option<String>,
    /// Time limit for each network step (DNS lookup, connect, TLS handshake, HTTP answer).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl DoctorArgs {
    /// The doctor's request: every option but `--config`.
    #[must_use]
    pub fn request(&self) -> doctor::Request {
        doctor::Request {
            hosts: self.hosts.clone(),
            json: self.json,
            dns_server: self.dns_server,
            expect: self.expect.clone(),
            connect: self.connect,
            ca_file: self.ca_file.clone(),
            link: self.link.clone(),
            site: self.site.clone(),
            owner_record: self.owner_record.clone(),
            ca_domain: self.ca_domain.clone(),
            timeout: self.timeout,
        }
    }
}

/// The `--config` option shared by subcommands.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// TOML configuration file; every key can be overridden with TRACKPROXY__SECTION__KEY.
    #[arg(long, short, value_name = "FILE", env = "TRACKPROXY_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// Where to read the configuration from.
    #[must_use]
    pub fn source(&self) -> Source<'_> {
        self.config
            .as_deref()
            .map_or(Source::Embedded, Source::File)
    }
}

/// Exit code for configuration errors (`EX_USAGE` of sysexits.h).
pub const EXIT_CONFIG: u8 = 64;

/// Runs every subcommand except `serve` (which needs the runtime `main` sets up) and returns
/// the process exit code.
#[must_use]
pub fn run(command: Command) -> ExitCode {
    match command {
        // `serve` needs the runtime and log guard that `main` owns.
        Command::Serve(_) => ExitCode::from(EXIT_CONFIG),
        Command::CheckConfig(args) => check_config(&args),
        Command::Probe(args) => probe_command(&args),
        Command::Doctor(args) => doctor_command(&args),
        Command::Init(args) => init_command(&args),
        Command::Certs(args) => {
            crate::logging::init_cli();
            load(&args).map_or_else(
                |code| code,
                |cfg| {
                    print!("{}", certs_table(&cfg));
                    ExitCode::SUCCESS
                },
            )
        }
    }
}

fn probe_command(args: &ProbeArgs) -> ExitCode {
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match probe(cfg.admin.listen, &args.path, args.timeout) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!(
                "trackproxy: {}{} answered {status}",
                cfg.admin.listen, args.path
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("trackproxy: {}{}: {e}", cfg.admin.listen, args.path);
            ExitCode::FAILURE
        }
    }
}

/// `trackproxy doctor`: 0 when no check failed, 1 when one did or the checks could not
/// start, 64 on a usage or configuration error.
fn doctor_command(args: &DoctorArgs) -> ExitCode {
    crate::logging::init_cli();
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match doctor::run(&args.request(), &cfg) {
        Ok(doctor::Outcome::Passed) => ExitCode::SUCCESS,
        Ok(doctor::Outcome::Failed) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("trackproxy doctor: {}", doctor::probe::chain(&e));
            match e {
                doctor::Error::Usage(_) => ExitCode::from(EXIT_CONFIG),
                doctor::Error::Runtime(_) | doctor::Error::Dns(_) => ExitCode::FAILURE,
            }
        }
    }
}

/// `trackproxy init`: checks the request, writes the configuration, and reads it back through
/// the configuration reader so that what is written is known to load.
fn init_command(args: &InitArgs) -> ExitCode {
    let usage = |m: String| {
        eprintln!("trackproxy init: {m}");
        ExitCode::from(EXIT_CONFIG)
    };
    let Some(esp) = config::esp::find(&args.esp) else {
        return usage(format!(
            "unknown ESP {:?}; known: {}",
            args.esp,
            config::esp::names()
        ));
    };
    if esp.needs_region() != args.region.is_some() {
        return usage(if esp.needs_region() {
            format!("--esp {} needs --region, e.g. --region us-east-1", esp.name)
        } else {
            format!("--region is only for --esp ses, not {}", esp.name)
        });
    }
    let mut hosts = Vec::new();
    for h in &args.hosts {
        match config::normalize_host_name(h) {
            Some(n) if !hosts.contains(&n) => hosts.push(n),
            Some(_) => {}
            None => return usage(format!("{h:?} is not a host name")),
        }
    }
    if let Some(c) = &args.acme_contact
        && (!c.contains('@') || c.contains(char::is_whitespace) || c.starts_with("mailto:"))
    {
        return usage(format!(
            "--acme-contact: expected an e-mail address such as ops@example.com, found {c:?}"
        ));
    }
    let toml = config::Starter {
        esp,
        region: args.region.as_deref(),
        hosts: &hosts,
        contact: args.acme_contact.as_deref(),
        cache_dir: &args.acme_cache_dir,
    }
    .toml();
    let label = args
        .output
        .as_ref()
        .map_or_else(|| "<init>".to_owned(), |p| p.display().to_string());
    if let Err(e) = config::Starter::check(&toml, &label) {
        return usage(format!("the configuration would not load: {e}"));
    }
    let Some(path) = &args.output else {
        print!("{toml}");
        return ExitCode::SUCCESS;
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut f| f.write_all(toml.as_bytes()));
    match written {
        Ok(()) => {
            eprintln!(
                "trackproxy init: wrote {}; check it with `trackproxy check-config --config {}`",
                path.display(),
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trackproxy init: cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// Loads the configuration `args` names; on failure prints every problem and gives exit code 64.
///
/// # Errors
/// The exit code to end with.
pub fn load(args: &ConfigArg) -> Result<Config, ExitCode> {
    crate::config::load(&args.source()).map_err(|e| {
        eprintln!("trackproxy: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check_config(args: &ConfigArg) -> ExitCode {
    crate::logging::init_cli();
    let cfg = match load(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match App::build(&cfg) {
        Ok(app) => {
            print!("{}", check_report(&app));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trackproxy: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `GET path` on the admin listener at `addr` (a wildcard address means this machine) and
/// returns the status code.
///
/// # Errors
/// When the connection fails, times out, or the answer is not HTTP.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<u16> {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, addr.port()), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let got = s.read(&mut head[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an HTTP answer: {line:?}"),
            )
        })
}

/// The `trackproxy certs` table for `cfg`: one line per host, aligned columns.
#[must_use]
pub fn certs_table(cfg: &Config) -> String {
    let rows: Vec<[String; 6]> = tls::inventory(cfg)
        .into_iter()
        .map(
            |HostCertificate {
                 host,
                 source,
                 cert,
                 note,
             }| {
                let (issuer, not_after, days) = match cert {
                    Some(c) => (
                        c.issuer,
                        humantime::format_rfc3339_seconds(c.not_after).to_string(),
                        tls::days_left(c.not_after).to_string(),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                [
                    host,
                    source.map_or_else(|| "missing".to_owned(), |s| s.to_string()),
                    issuer,
                    not_after,
                    days,
                    note.unwrap_or_default(),
                ]
            },
        )
        .collect();
    let header = ["HOST", "SOURCE", "ISSUER", "NOT AFTER", "DAYS LEFT", "NOTE"].map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (w, cell)) in widths.iter().zip(row).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// What `trackproxy check-config` prints for a valid configuration: each host and where its
/// certificate comes from.
#[must_use]
pub fn check_report(app: &App) -> String {
    let mut out = format!("{}: configuration is valid\n", app.config().origin);
    for (host, c) in app.certificates() {
        let _ = writeln!(
            out,
            "  {host}: certificate from {} (issuer {})",
            c.source, c.issuer
        );
    }
    for host in app.acme_hosts() {
        if !app.certificates().iter().any(|(h, _)| *h == host) {
            let _ = writeln!(out, "  {host}: certificate to be ordered over ACME");
        }
    }
    out
}
