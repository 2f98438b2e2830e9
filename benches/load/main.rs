//! Load harness: trackproxy against nginx doing the same job, side by side.
//!
//! ```sh
//! cargo bench --bench load                       # the README's table: 5 rounds × 5 s, 10 000 idle
//! cargo bench --bench load -- --smoke            # ~1 s per scenario, 200 idle connections
//! cargo bench --bench load -- --help             # rounds, duration, scenarios, proxies, …
//! ```
//!
//! It mints a throw-away CA (ECDSA P-256), starts a local upstream that answers like
//! sendgrid.net, then for each round, scenario and proxy (order alternating between rounds)
//! starts the proxy afresh on loopback ephemeral ports, warms up, measures, and stops it.
//! Scenarios: `h1-keepalive` (64 connections), `h1-new-connection` (64 clients, one request per
//! new TLS connection with a full handshake), `h2` (32 connections × 10 streams). Then it holds
//! 10 000 idle keep-alive TLS connections to each proxy and reads their memory.
//!
//! Reported per run: requests/s, latency p50/p99/p99.9, errors, the proxy's CPU seconds (utime +
//! stime from `/proc/PID/stat`; nginx master + worker), requests per proxy CPU-second, peak RSS
//! (`VmHWM`), upstream connections opened. The table holds medians over rounds, and the
//! trackproxy/nginx ratios per round (median, min–max).
//!
//! The run fails if any handshake in `h1-new-connection` was resumed, counted on the client
//! (rustls `handshake_kind()`) and on the server (nginx `$ssl_session_reused`; trackproxy's
//! `trackproxy_tls_handshakes_total` metric once the admin listener has it).
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
mod upstream;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rustls::HandshakeKind;

use client::{Client, Scenario, Window};
use proxies::{Env, Handshakes, Running, Which};
use upstream::Upstream;

/// trackproxy vs nginx on the tracking-link job.
#[derive(Debug, Parser)]
#[command(name = "load", about)]
struct Args {
    /// Interleaved rounds (each runs every scenario on every proxy).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Measured seconds per scenario and proxy.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up seconds before each measurement (connections open, pools fill).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Scenarios to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Scenario::ALL)]
    scenarios: Vec<Scenario>,
    /// Proxies to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Which::Trackproxy, Which::Nginx])]
    proxies: Vec<Which>,
    /// Workers of both proxies: trackproxy's runtime threads (`TOKIO_WORKER_THREADS`), nginx's
    /// `worker_processes`. Default: each as shipped or specified — trackproxy one thread per
    /// core, nginx one worker (the issue's reference figures).
    #[arg(long)]
    workers: Option<usize>,
    /// Idle keep-alive TLS connections for the memory measurement (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Make the idle connections HTTP/2 (ALPN h2) instead of HTTP/1.1.
    #[arg(long)]
    idle_h2: bool,
    /// Quick check: 1 round of 1 s per scenario, 200 idle connections; fails on any error.
    #[arg(long)]
    smoke: bool,
    /// The trackproxy binary (default: the one cargo built for this bench, release profile).
    #[arg(long)]
    trackproxy: Option<PathBuf>,
    /// The nginx binary (default: `nginx` on the PATH, else /usr/sbin/nginx).
    #[arg(long)]
    nginx: Option<PathBuf>,
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
        args.duration = 1.0;
        args.warmup = 0.3;
        args.idle = args.idle.min(200);
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
    match runtime.block_on(run(&args)) {
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

/// One measurement of one proxy on one scenario.
#[derive(Debug, Clone)]
struct Run {
    round: usize,
    scenario: Scenario,
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
    client_handshakes: Handshakes,
    server_handshakes: Option<Handshakes>,
    /// CPU share of the machine used by neither the proxy nor this harness.
    other_cpu: f64,
}

async fn run(args: &Args) -> Result<bool> {
    if args.rounds == 0 || args.duration <= 0.0 {
        bail!("--rounds and --duration must be positive");
    }
    if args.idle > 0 {
        let need = args.idle as u64 + 4096;
        let got = rlimit::increase_nofile_limit(need).context("raising the open-file limit")?;
        if got < need {
            bail!(
                "open-file limit is {got}, {need} needed for --idle {}: raise the hard limit (ulimit -Hn) or lower --idle",
                args.idle
            );
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("trackproxy-load")
        .tempdir()?;
    // nginx's worker drops root privileges and must reach its temp directories.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let pki = pki::Pki::create(dir.path())?;
    let roots = pki.roots()?;
    let upstream = Upstream::start(pki.upstream_tls()?).await?;
    let trackproxy = args
        .trackproxy
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_trackproxy")));
    let env = Env {
        dir: dir.path().to_owned(),
        pki,
        upstream: upstream.addr,
        trackproxy,
        nginx: args.nginx.clone().unwrap_or_else(nginx_binary),
        workers: args.workers.map(|w| w.max(1)),
    };
    eprintln!(
        "load: {} round(s) × {} scenario(s) × {} prox(ies), workers {}, {} s warm-up + {} s each; {} idle connections; trackproxy = {}; load average {}",
        args.rounds,
        args.scenarios.len(),
        args.proxies.len(),
        args.workers.map_or_else(
            || "trackproxy: one per core, nginx: 1".to_owned(),
            |w| w.to_string()
        ),
        args.warmup,
        args.duration,
        args.idle,
        env.trackproxy.display(),
        load_average(),
    );

    let mut ok = true;
    for &p in &args.proxies {
        ok &= resumption_probe(p, &env, &roots).await?;
    }

    let mut runs = Vec::new();
    for round in 0..args.rounds {
        for &scenario in &args.scenarios {
            let mut order = args.proxies.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for p in order {
                let r = measure(p, scenario, round, args, &env, &upstream, &roots).await?;
                eprintln!("{}", progress_line(&r, args.rounds));
                runs.push(r);
            }
        }
    }

    let mut idle = Vec::new();
    if args.idle > 0 {
        for &p in &args.proxies {
            let m = measure_idle(p, args.idle, args.idle_h2, &env, &roots).await?;
            eprintln!(
                "idle {p}: {:.1} MiB with {} connections ({:.1} MiB before)",
                m.rss_mib, m.connections, m.base_mib
            );
            idle.push(m);
        }
    }

    println!("{}", report(&runs, &idle, args));
    ok &= verdict(&runs, args.smoke, upstream.bad_host());
    Ok(ok)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    proxy: Which,
    scenario: Scenario,
    round: usize,
    args: &Args,
    env: &Env,
    upstream: &Upstream,
    roots: &rustls::RootCertStore,
) -> Result<Run> {
    let running = Running::start(proxy, env, scenario == Scenario::H1NewConnection).await?;
    let client = Client::new(running.addr, roots)?;
    let up0 = upstream.connections();
    let now = Instant::now();
    let w = Window {
        start: now + Duration::from_secs_f64(args.warmup),
        end: now + Duration::from_secs_f64(args.warmup + args.duration),
    };
    let load = tokio::spawn(async move { client.run(scenario, w).await });

    tokio::time::sleep_until(w.start.into()).await;
    let (cpu0, busy0, self0, t0) = snapshot(&running);
    tokio::time::sleep_until(w.end.into()).await;
    let (cpu1, busy1, self1, t1) = snapshot(&running);
    let tally = load.await.context("load generator")?;

    let tp_handshakes = if proxy == Which::Trackproxy {
        running.trackproxy_handshakes().await
    } else {
        None
    };
    let peak_rss_mib = running.peak_rss_kib() as f64 / 1024.0;
    let upstream_conns = upstream.connections() - up0;
    let nginx_handshakes = running.stop().await?;

    let secs = t1.duration_since(t0).as_secs_f64();
    let cpu_s = cpu1 - cpu0;
    let mut lat = tally.latencies_us;
    lat.sort_unstable();
    let requests = lat.len() as u64;
    let other = ((busy1 - busy0) - cpu_s - (self1 - self0)).max(0.0) / (secs * cores());
    Ok(Run {
        round,
        scenario,
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
        client_handshakes: tally.handshakes,
        server_handshakes: nginx_handshakes.or(tp_handshakes),
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

/// `nginx` from the PATH, or Debian's /usr/sbin/nginx when /usr/sbin is not on it.
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nginx").is_file()));
    if on_path || !std::path::Path::new("/usr/sbin/nginx").is_file() {
        PathBuf::from("nginx")
    } else {
        PathBuf::from("/usr/sbin/nginx")
    }
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
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
/// client and, where the proxy counts it, by the server. This proves the checks that guard
/// the new-connection scenario can fail.
async fn resumption_probe(proxy: Which, env: &Env, roots: &rustls::RootCertStore) -> Result<bool> {
    let running = Running::start(proxy, env, true).await?;
    let client = Client::new(running.addr, roots)?;
    let kind = client.resumption_probe(roots).await?;
    let tp = if proxy == Which::Trackproxy {
        running.trackproxy_handshakes().await
    } else {
        None
    };
    let server = running.stop().await?.or(tp);
    let client_ok = kind == HandshakeKind::Resumed;
    let server_ok = server.is_none_or(|h| h.resumed >= 1 && h.full >= 1);
    eprintln!(
        "resumption probe {proxy}: client saw {kind:?} on reconnect; server counted {}",
        server.map_or_else(
            || "n/a (no server-side counter yet)".to_owned(),
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
    roots: &rustls::RootCertStore,
) -> Result<Idle> {
    let running = Running::start(proxy, env, false).await?;
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

fn progress_line(r: &Run, rounds: usize) -> String {
    let mut s = format!(
        "round {}/{rounds} {:<17} {:<10} {:>8.0} req/s  p99 {:>6.2} ms  {:>7.0} req/CPU-s  errors {}  RSS {:.1} MiB  upstream conns {}  other load {:.0}%",
        r.round + 1,
        r.scenario.name(),
        r.proxy,
        r.rps,
        r.p99_ms,
        r.per_cpu_s,
        r.errors,
        r.peak_rss_mib,
        r.upstream_conns,
        r.other_cpu * 100.0
    );
    if r.scenario == Scenario::H1NewConnection {
        let _ = write!(
            s,
            "  handshakes client {}/{} full/resumed",
            r.client_handshakes.full, r.client_handshakes.resumed
        );
        if let Some(h) = r.server_handshakes {
            let _ = write!(s, ", server {}/{}", h.full, h.resumed);
        }
    }
    if let Some(e) = &r.first_error {
        let _ = write!(s, "  first error: {e}");
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

/// Median with its spread over rounds: `12 345 (11 900–12 800)`.
fn spread(v: &[f64], decimals: usize) -> String {
    let (lo, hi) = min_max(v);
    if v.len() < 2 {
        return format!("{:.*}", decimals, median(v.to_vec()));
    }
    format!(
        "{:.*} ({:.*}–{:.*})",
        decimals,
        median(v.to_vec()),
        decimals,
        lo,
        decimals,
        hi
    )
}

#[allow(clippy::too_many_lines)] // one table after the other
fn report(runs: &[Run], idle: &[Idle], args: &Args) -> String {
    let mut out = String::new();
    if args.smoke {
        let _ = writeln!(
            out,
            "\nSMOKE RUN: a functional check. One short round (and, under `cargo test`, debug builds): the figures below are not a measurement."
        );
    }
    let _ = writeln!(
        out,
        "\n{} round(s), {} s measured per scenario and proxy (medians; min–max over rounds in brackets)\n",
        args.rounds, args.duration
    );
    let _ = writeln!(
        out,
        "| scenario | proxy | requests/s | p50 ms | p99 ms | p99.9 ms | errors | proxy CPU s | requests per proxy CPU-s | peak RSS MiB | upstream conns |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let by = |s: Scenario, p: Which| -> Vec<&Run> {
        runs.iter()
            .filter(|r| r.scenario == s && r.proxy == p)
            .collect()
    };
    for &s in &args.scenarios {
        for &p in &args.proxies {
            let rs = by(s, p);
            if rs.is_empty() {
                continue;
            }
            let f = |g: fn(&Run) -> f64| rs.iter().map(|r| g(r)).collect::<Vec<f64>>();
            let _ = writeln!(
                out,
                "| {} | {p} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {} | {:.1} | {:.0} |",
                s.name(),
                median(f(|r| r.rps)),
                median(f(|r| r.p50_ms)),
                median(f(|r| r.p99_ms)),
                median(f(|r| r.p999_ms)),
                rs.iter().map(|r| r.errors).sum::<u64>(),
                median(f(|r| r.cpu_s)),
                spread(&f(|r| r.per_cpu_s), 0),
                median(f(|r| r.peak_rss_mib)),
                median(f(|r| r.upstream_conns as f64)),
            );
        }
    }

    if args.proxies.contains(&Which::Trackproxy) && args.proxies.contains(&Which::Nginx) {
        let _ = writeln!(
            out,
            "\ntrackproxy / nginx, per round (median, min–max):\n\n| scenario | requests per proxy CPU-s | target | p99 latency | target | peak RSS | target | requests/s |\n|---|---:|---|---:|---|---:|---|---:|"
        );
        for &s in &args.scenarios {
            let tp = by(s, Which::Trackproxy);
            let ng = by(s, Which::Nginx);
            let rounds: BTreeMap<usize, (&Run, &Run)> = tp
                .iter()
                .filter_map(|t| {
                    ng.iter()
                        .find(|n| n.round == t.round)
                        .map(|n| (t.round, (*t, *n)))
                })
                .collect();
            let ratio = |g: fn(&Run) -> f64| -> Vec<f64> {
                rounds.values().map(|(t, n)| g(t) / g(n)).collect()
            };
            let per_cpu = ratio(|r| r.per_cpu_s);
            let p99 = ratio(|r| r.p99_ms);
            let rss = ratio(|r| r.peak_rss_mib);
            let need = if s == Scenario::H1NewConnection {
                2.0
            } else {
                1.0
            };
            let met = |ok: bool| if ok { "met" } else { "**missed**" };
            let p99_target = if s == Scenario::H1NewConnection {
                "—".to_owned()
            } else {
                format!("≤ 1.0: {}", met(median(p99.clone()) <= 1.0))
            };
            let _ = writeln!(
                out,
                "| {} | {} | ≥ {need:.1}: {} | {} | {p99_target} | {} | ≤ 1.0: {} | {} |",
                s.name(),
                spread(&per_cpu, 2),
                met(median(per_cpu.clone()) >= need),
                spread(&p99, 2),
                spread(&rss, 2),
                met(median(rss.clone()) <= 1.0),
                spread(&ratio(|r| r.rps), 2),
            );
        }
    }

    if !idle.is_empty() {
        let _ = writeln!(
            out,
            "\nMemory with idle keep-alive TLS connections ({}; one request made on each, then idle):\n\n| proxy | idle connections | RSS before MiB | RSS with them MiB | KiB per connection | target |\n|---|---:|---:|---:|---:|---|",
            if args.idle_h2 { "HTTP/2" } else { "HTTP/1.1" }
        );
        for m in idle {
            let per = (m.rss_mib - m.base_mib) * 1024.0 / m.connections.max(1) as f64;
            let target = if m.proxy == Which::Trackproxy && m.connections >= 10_000 {
                format!(
                    "< 100 MiB: {}",
                    if m.rss_mib < 100.0 {
                        "met"
                    } else {
                        "**missed**"
                    }
                )
            } else {
                "—".to_owned()
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {per:.1} | {target} |",
                m.proxy, m.connections, m.base_mib, m.rss_mib
            );
        }
    }

    let others: Vec<f64> = runs.iter().map(|r| r.other_cpu * 100.0).collect();
    if !others.is_empty() {
        let (_, hi) = min_max(&others);
        let _ = writeln!(
            out,
            "\nNoise: other processes used {:.0}% of the machine's CPU during the median measurement (max {hi:.0}%); load average now {}.",
            median(others.clone()),
            load_average()
        );
    }
    let nc: Vec<&Run> = runs
        .iter()
        .filter(|r| r.scenario == Scenario::H1NewConnection)
        .collect();
    for &p in &args.proxies {
        let rs: Vec<&&Run> = nc.iter().filter(|r| r.proxy == p).collect();
        if rs.is_empty() {
            continue;
        }
        let c = rs.iter().fold(Handshakes::default(), |a, r| Handshakes {
            full: a.full + r.client_handshakes.full,
            resumed: a.resumed + r.client_handshakes.resumed,
        });
        let server =
            rs.iter()
                .map(|r| r.server_handshakes)
                .try_fold(Handshakes::default(), |a, h| {
                    h.map(|h| Handshakes {
                        full: a.full + h.full,
                        resumed: a.resumed + h.resumed,
                    })
                });
        let _ = writeln!(
            out,
            "h1-new-connection handshakes, {p}: client {} full / {} resumed; server {}.",
            c.full,
            c.resumed,
            server.map_or_else(
                || "not counted (metric not available yet)".to_owned(),
                |h| format!("{} full / {} resumed", h.full, h.resumed)
            )
        );
    }
    out
}

/// Whether the run is valid: no resumed handshake in the new-connection scenario, every
/// request answered with the branded `Host`; in smoke mode also no error at all.
fn verdict(runs: &[Run], smoke: bool, bad_host: u64) -> bool {
    let mut ok = true;
    for r in runs {
        let resumed = r.client_handshakes.resumed + r.server_handshakes.map_or(0, |h| h.resumed);
        if r.scenario == Scenario::H1NewConnection && resumed > 0 {
            eprintln!(
                "load: FAILED: {} resumed {resumed} TLS session(s) in h1-new-connection (round {})",
                r.proxy,
                r.round + 1
            );
            ok = false;
        }
        if r.requests == 0 {
            eprintln!(
                "load: FAILED: {} completed no request in {} (round {})",
                r.proxy,
                r.scenario.name(),
                r.round + 1
            );
            ok = false;
        }
        if smoke && r.errors > 0 {
            eprintln!(
                "load: FAILED: {} had {} error(s) in {}: {}",
                r.proxy,
                r.errors,
                r.scenario.name(),
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
