//! Load harness: trackproxy against nginx and HAProxy doing the same job, side by side.
//!
//! ```sh
//! cargo bench --bench load                       # the README's tables: 5 rounds × 5 s, 10 000 idle
//! cargo bench --bench load -- --logging on,off   # also the secondary table, all logging off
//! cargo bench --bench load -- --smoke            # a functional check, ~1 minute
//! cargo bench --bench load -- --help             # rounds, duration, scenarios, proxies, …
//! ```
//!
//! It mints a throw-away CA (ECDSA P-256), starts two local upstreams that answer like
//! sendgrid.net (one over TLS, one over plain HTTP), then for each round, logging mode, upstream,
//! scenario and proxy (the proxies' order rotating between rounds) starts the proxy afresh on
//! loopback ephemeral ports, warms up, measures, and stops it. Scenarios: `h1-keepalive` (64
//! connections), `h1-new-connection` (64 clients, one request per new TLS connection with a
//! full handshake), `h1-new-connection-nagle` (the same from 8 clients without `TCP_NODELAY`),
//! `h2` (32 connections × 10 streams). Then it holds 10 000 idle keep-alive TLS connections to
//! each proxy and reads their memory.
//!
//! With logging on (the default, and what the targets are judged on) each proxy logs every
//! request as users run it (see `proxies.rs`); `--logging off` measures all three without, and
//! its table is reported as a secondary one.
//!
//! Reported per run: requests/s, latency p50/p99/p99.9, errors, the proxy's CPU seconds (utime +
//! stime from `/proc/PID/stat`; nginx and HAProxy: master + worker), requests per proxy
//! CPU-second, peak RSS (`VmHWM`), upstream connections opened. The tables hold medians over
//! rounds, and the trackproxy/nginx and trackproxy/HAProxy ratios per round (median, min–max).
//!
//! The run fails if any handshake in the new-connection scenarios was resumed, counted on the
//! client (rustls `handshake_kind()`) and on the server (trackproxy's
//! `trackproxy_tls_handshakes_total`, HAProxy's `ssl_reused_sess`, nginx's
//! `$ssl_session_reused`), or if, with logging on, a proxy's access log has fewer request lines
//! than requests it answered.
//!
//! `cargo test` runs this binary without `--bench`: it then runs the smoke mode as a test
//! (against the debug build) and fails on any error.

#![allow(
    // Statistics over counts and durations: precision loss far below measurement noise.
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    // `send`/`seed`, `args`/`argv`: clear enough in context.
    clippy::similar_names
)]

mod client;
mod job;
mod pki;
mod proxies;
mod report;
mod upstream;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rustls::HandshakeKind;

use client::{Client, Scenario, Window};
use proxies::{Env, Handshakes, Logging, Running, Scheme, Setup, Which};
use upstream::Upstream;

/// trackproxy vs nginx and HAProxy on the tracking-link job.
#[derive(Debug, Parser)]
#[command(name = "load", about)]
struct Args {
    /// Interleaved rounds (each runs every case on every proxy).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Measured seconds per case and proxy.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up seconds before each measurement (connections open, pools fill).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Scenarios to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Scenario::ALL)]
    scenarios: Vec<Scenario>,
    /// Upstreams the proxies forward to: over TLS (as to sendgrid.net) and plain HTTP.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Scheme::Https, Scheme::Http])]
    upstreams: Vec<Scheme>,
    /// Logging modes: `on` (access logs as users run them; the targets apply), `off` (none, for
    /// all three; a secondary table).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Logging::On])]
    logging: Vec<Logging>,
    /// Proxies to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Which::Trackproxy, Which::Nginx, Which::Haproxy])]
    proxies: Vec<Which>,
    /// Workers of all proxies: trackproxy's runtime threads (`TOKIO_WORKER_THREADS`), nginx's
    /// `worker_processes`, HAProxy's `nbthread`. Default: trackproxy one thread per core (as
    /// shipped), nginx one worker, HAProxy one thread (the issue's reference figures).
    #[arg(long)]
    workers: Option<usize>,
    /// Idle keep-alive TLS connections for the memory measurement (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Make the idle connections HTTP/2 (ALPN h2) instead of HTTP/1.1.
    #[arg(long)]
    idle_h2: bool,
    /// Quick check: 1 round of short measurements, each scenario, upstream and logging mode
    /// at least once, 200 idle connections; fails on any error.
    #[arg(long)]
    smoke: bool,
    /// The trackproxy binary (default: the one cargo built for this bench, release profile).
    #[arg(long)]
    trackproxy: Option<PathBuf>,
    /// The nginx binary (default: `nginx` on the PATH, else /usr/sbin/nginx).
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// The haproxy binary (default: `haproxy` on the PATH, else /usr/sbin/haproxy).
    #[arg(long)]
    haproxy: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn smoke() -> Self {
        let mut a = Args::parse_from(["load"]);
        a.smoke = true;
        a
    }

    /// The cases to run, in order: each logging mode, upstream and scenario. The smoke mode
    /// runs each scenario once (the first logging mode and upstream), and the first scenario in
    /// every other logging mode and upstream: every client path and every proxy configuration
    /// once.
    fn cases(&self) -> Vec<Case> {
        let in_smoke = |c: &Case| {
            c.scenario == self.scenarios[0]
                || (c.logging == self.logging[0] && c.upstream == self.upstreams[0])
        };
        self.logging
            .iter()
            .flat_map(|&logging| {
                self.upstreams.iter().flat_map(move |&upstream| {
                    self.scenarios.iter().map(move |&scenario| Case {
                        logging,
                        upstream,
                        scenario,
                    })
                })
            })
            .filter(|c| !self.smoke || in_smoke(c))
            .collect()
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let mut args = if argv.iter().any(|a| a == "--bench") {
        Args::parse()
    } else {
        // Run by `cargo test` (libtest-style arguments): a smoke test named `load_smoke`.
        if argv.iter().any(|a| a == "--list") {
            println!("load_smoke: test");
            return ExitCode::SUCCESS;
        }
        if !test_filter_matches(&argv[1..], "load_smoke") {
            return ExitCode::SUCCESS;
        }
        Args::smoke()
    };
    if args.smoke {
        args.rounds = 1;
        args.duration = 0.5;
        // Long enough for the debug builds under `cargo test` to open their connections (h2:
        // 320 upstream TLS handshakes).
        args.warmup = 1.0;
        args.idle = args.idle.min(200);
        args.logging = vec![Logging::On, Logging::Off];
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&mut args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// libtest semantics: no filter runs everything; otherwise a filter must be a substring of the
/// name (`--exact`: equal). Flags and the values of flags that take one are not filters.
fn test_filter_matches(args: &[String], name: &str) -> bool {
    const WITH_VALUE: [&str; 6] = [
        "--test-threads",
        "--skip",
        "--format",
        "--color",
        "--logfile",
        "-Z",
    ];
    let exact = args.iter().any(|a| a == "--exact");
    let mut filters = Vec::new();
    let mut skip_next = false;
    for a in args {
        if skip_next {
            skip_next = false;
        } else if WITH_VALUE.contains(&a.as_str()) {
            skip_next = true;
        } else if !a.starts_with('-') {
            filters.push(a.as_str());
        }
    }
    filters.is_empty()
        || filters
            .iter()
            .any(|f| if exact { *f == name } else { name.contains(f) })
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What is measured besides the proxy: the logging mode, the upstream, the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Case {
    logging: Logging,
    upstream: Scheme,
    scenario: Scenario,
}

impl Case {
    fn setup(self) -> Setup {
        Setup {
            logging: self.logging,
            upstream: self.upstream,
            count_handshakes: self.scenario.new_connections(),
        }
    }
}

/// One measurement of one proxy on one case.
#[derive(Debug, Clone)]
struct Run {
    round: usize,
    case: Case,
    proxy: Which,
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    errors: u64,
    first_error: Option<String>,
    cpu_s: f64,
    per_cpu_s: f64,
    peak_rss_mib: f64,
    upstream_conns: u64,
    /// Requests answered, warm-up included.
    answered: u64,
    /// The proxy's access log: its request lines and the times it logged (`None` with logging
    /// off).
    log: Option<proxies::LogStats>,
    client_handshakes: Handshakes,
    server_handshakes: Option<Handshakes>,
    /// CPU share of the machine used by neither the proxy nor this harness.
    other_cpu: f64,
}

async fn run(args: &mut Args) -> Result<bool> {
    if args.rounds == 0 || args.duration <= 0.0 {
        bail!("--rounds and --duration must be positive");
    }
    if args.scenarios.is_empty() || args.upstreams.is_empty() || args.logging.is_empty() {
        bail!("--scenarios, --upstreams and --logging must not be empty");
    }
    args.idle = raise_open_files(args.idle)?;
    // Under the build's target directory rather than /tmp (a tmpfs on some systems): the access
    // logs are written to disk, as in production.
    let dir = tempfile::Builder::new()
        .prefix("trackproxy-load")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    // nginx's worker drops root privileges and must reach its temp directories.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let env = start_env(args, dir.path()).await?;
    let roots = env.pki.roots()?;
    let cases = args.cases();
    eprintln!(
        "load: {} round(s) × {} case(s) × {} prox(ies), workers {}, {} s warm-up + {} s each; {} idle connections; trackproxy = {}; load average {}",
        args.rounds,
        cases.len(),
        args.proxies.len(),
        args.workers.map_or_else(
            || "trackproxy: one per core, nginx: 1, HAProxy: 1".to_owned(),
            |w| w.to_string()
        ),
        args.warmup,
        args.duration,
        args.idle,
        env.trackproxy.display(),
        report::load_average(),
    );

    let mut ok = true;
    let first = Setup {
        logging: args.logging[0],
        upstream: args.upstreams[0],
        count_handshakes: true,
    };
    for &p in &args.proxies {
        ok &= resumption_probe(p, &env, first, &roots).await?;
    }

    let mut runs = Vec::new();
    for round in 0..args.rounds {
        for &case in &cases {
            // Each proxy takes each place in the order in turn.
            let mut order = args.proxies.clone();
            let n = order.len().max(1);
            order.rotate_left(round % n);
            for p in order {
                let r = measure(p, case, round, args, &env, &roots).await?;
                eprintln!("{}", report::progress_line(&r, args.rounds));
                runs.push(r);
            }
        }
    }

    let mut idle = Vec::new();
    if args.idle > 0 {
        let setup = Setup {
            count_handshakes: false,
            ..first
        };
        for &p in &args.proxies {
            let m = measure_idle(p, args.idle, args.idle_h2, &env, setup, &roots).await?;
            eprintln!(
                "idle {p}: {:.1} MiB with {} connections ({:.1} MiB before)",
                m.rss_mib, m.connections, m.base_mib
            );
            idle.push(m);
        }
    }

    println!("{}", report::report(&runs, &idle, args));
    ok &= verdict(
        &runs,
        args.smoke,
        env.https.bad_host() + env.http.bad_host(),
    );
    Ok(ok)
}

/// Certificates, the two upstreams, and the proxies' binaries.
async fn start_env(args: &Args, dir: &Path) -> Result<Env> {
    let pki = pki::Pki::create(dir)?;
    Ok(Env {
        dir: dir.to_owned(),
        https: Upstream::start(Some(pki.upstream_tls()?)).await?,
        http: Upstream::start(None).await?,
        pki,
        trackproxy: args
            .trackproxy
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_trackproxy"))),
        nginx: args.nginx.clone().unwrap_or_else(|| system_binary("nginx")),
        haproxy: args
            .haproxy
            .clone()
            .unwrap_or_else(|| system_binary("haproxy")),
        workers: args.workers.map(|w| w.max(1)),
        max_connections: args.idle + 1000,
    })
}

async fn measure(
    proxy: Which,
    case: Case,
    round: usize,
    args: &Args,
    env: &Env,
    roots: &rustls::RootCertStore,
) -> Result<Run> {
    let running = Running::start(proxy, env, case.setup()).await?;
    let client = Client::new(running.addr, roots)?;
    let upstream = env.upstream(case.upstream);
    let up0 = upstream.connections();
    let now = Instant::now();
    let w = Window {
        start: now + Duration::from_secs_f64(args.warmup),
        end: now + Duration::from_secs_f64(args.warmup + args.duration),
    };
    let scenario = case.scenario;
    let load = tokio::spawn(async move { client.run(scenario, w).await });

    tokio::time::sleep_until(w.start.into()).await;
    let (cpu0, busy0, self0, t0) = snapshot(&running);
    tokio::time::sleep_until(w.end.into()).await;
    let (cpu1, busy1, self1, t1) = snapshot(&running);
    let tally = load.await.context("load generator")?;

    let peak_rss_mib = running.peak_rss_kib() as f64 / 1024.0;
    let upstream_conns = upstream.connections() - up0;
    let stopped = running.stop().await?;

    let secs = t1.duration_since(t0).as_secs_f64();
    let cpu_s = cpu1 - cpu0;
    let mut lat = tally.latencies_us;
    lat.sort_unstable();
    let requests = lat.len() as u64;
    let other = ((busy1 - busy0) - cpu_s - (self1 - self0)).max(0.0) / (secs * cores());
    Ok(Run {
        round,
        case,
        proxy,
        requests,
        rps: requests as f64 / secs,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        p999_ms: percentile(&lat, 0.999),
        errors: tally.errors,
        first_error: tally.first_error,
        cpu_s,
        per_cpu_s: if cpu_s > 0.0 {
            requests as f64 / cpu_s
        } else {
            0.0
        },
        peak_rss_mib,
        upstream_conns,
        answered: tally.answered,
        log: stopped.log,
        client_handshakes: tally.handshakes,
        server_handshakes: stopped.handshakes,
        other_cpu: other,
    })
}

fn snapshot(running: &Running) -> (f64, f64, f64, Instant) {
    (
        running.cpu_seconds(),
        proxies::machine_busy_seconds().unwrap_or(0.0),
        proxies::cpu_seconds(std::process::id()).unwrap_or(0.0),
        Instant::now(),
    )
}

/// Descriptors the harness needs besides two per idle connection.
const OTHER_FILES: u64 = 4096;

/// Raises the open-file limit for `idle` connections: the harness holds their client side,
/// and the proxies inherit the limit (HAProxy wants two descriptors per connection it may
/// accept). Past the hard limit only a process with `CAP_SYS_RESOURCE` can go; without it,
/// the idle connections are lowered to what the limit allows (in thousands), said on stderr
/// and shown in the report's memory table. Returns the number to open.
fn raise_open_files(idle: usize) -> Result<usize> {
    let need = 2 * idle as u64 + OTHER_FILES;
    let mut got = rlimit::increase_nofile_limit(need).context("raising the open-file limit")?;
    if got < need && rlimit::setrlimit(rlimit::Resource::NOFILE, need, need).is_ok() {
        got = need;
    }
    if got >= need {
        return Ok(idle);
    }
    let fits = usize::try_from(got.saturating_sub(OTHER_FILES) / 2 / 1000 * 1000).unwrap_or(0);
    if fits == 0 {
        bail!(
            "open-file limit is {got}, {need} needed for --idle {idle}: raise the hard limit (ulimit -Hn) or lower --idle"
        );
    }
    eprintln!(
        "load: open-file limit is {got} (hard), {need} needed for --idle {idle}: measuring {fits} idle connections instead (raise ulimit -Hn for more)"
    );
    Ok(fits)
}

/// `name` from the PATH, or Debian's /usr/sbin/`name` when /usr/sbin is not on it.
fn system_binary(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    let sbin = Path::new("/usr/sbin").join(name);
    if on_path || !sbin.is_file() {
        PathBuf::from(name)
    } else {
        sbin
    }
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// Latency at quantile `q` of sorted µs samples, in ms.
fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    f64::from(sorted[i]) / 1000.0
}

/// A client that resumes connects twice: the second handshake must be seen as resumed by the
/// client and by the server's count. This proves the checks that guard the new-connection
/// scenarios can fail.
async fn resumption_probe(
    proxy: Which,
    env: &Env,
    setup: Setup,
    roots: &rustls::RootCertStore,
) -> Result<bool> {
    let running = Running::start(proxy, env, setup).await?;
    let client = Client::new(running.addr, roots)?;
    let kind = client.resumption_probe(roots).await?;
    let server = running.stop().await?.handshakes;
    let client_ok = kind == HandshakeKind::Resumed;
    let server_ok = server.is_some_and(|h| h.resumed >= 1 && h.full >= 1);
    eprintln!(
        "resumption probe {proxy}: client saw {kind:?} on reconnect; server counted {}",
        server.map_or_else(
            || "nothing (no count)".to_owned(),
            |h| format!("{} full / {} resumed", h.full, h.resumed)
        )
    );
    if !client_ok || !server_ok {
        eprintln!(
            "load: FAILED: resumption is not detected for {proxy}; the full-handshake check cannot be trusted"
        );
    }
    Ok(client_ok && server_ok)
}

/// Memory of one proxy holding idle connections.
struct Idle {
    proxy: Which,
    connections: usize,
    base_mib: f64,
    rss_mib: f64,
}

async fn measure_idle(
    proxy: Which,
    n: usize,
    h2: bool,
    env: &Env,
    setup: Setup,
    roots: &rustls::RootCertStore,
) -> Result<Idle> {
    let running = Running::start(proxy, env, setup).await?;
    let client = Client::new(running.addr, roots)?;
    // One request first, so the upstream pool and lazily built state exist in the baseline.
    drop(client.open_idle(1, h2).await?);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = running.rss_kib();
    let conns = client.open_idle(n, h2).await?;
    // Let the proxy settle (buffers released after the requests) before reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = running.rss_kib();
    let connections = conns.iter().filter(|c| !c.is_closed()).count();
    drop(conns);
    running.stop().await?;
    Ok(Idle {
        proxy,
        connections,
        base_mib: base as f64 / 1024.0,
        rss_mib: rss as f64 / 1024.0,
    })
}

/// Whether the run is valid: no resumed handshake in the new-connection scenarios, every
/// request answered with the branded `Host`, with logging on every answered request in the
/// access log; in smoke mode also no error at all.
fn verdict(runs: &[Run], smoke: bool, bad_host: u64) -> bool {
    let mut ok = true;
    for r in runs {
        let what = format!(
            "{} in {} (upstream {}, logging {}, round {})",
            r.proxy,
            r.case.scenario.name(),
            r.case.upstream,
            r.case.logging,
            r.round + 1
        );
        let resumed = r.client_handshakes.resumed + r.server_handshakes.map_or(0, |h| h.resumed);
        if r.case.scenario.new_connections() && resumed > 0 {
            eprintln!("load: FAILED: {what}: {resumed} TLS session(s) resumed");
            ok = false;
        }
        if r.requests == 0 {
            eprintln!("load: FAILED: {what}: no request completed");
            ok = false;
        }
        if let Some(lines) = r.log.map(|l| l.lines)
            && lines < r.answered
        {
            eprintln!(
                "load: FAILED: {what}: {lines} access-log lines for {} requests answered",
                r.answered
            );
            ok = false;
        }
        if smoke && r.errors > 0 {
            eprintln!(
                "load: FAILED: {what}: {} error(s): {}",
                r.errors,
                r.first_error.as_deref().unwrap_or("")
            );
            ok = false;
        }
    }
    if bad_host > 0 {
        eprintln!("load: FAILED: the upstream got {bad_host} request(s) without the branded Host");
        ok = false;
    }
    ok
}
