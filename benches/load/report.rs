//! The tables printed at the end of a run, and the progress line after each measurement.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::client::Scenario;
use crate::proxies::{Handshakes, LogStats, Logging, Scheme, Which};
use crate::{Args, Case, Idle, Run};

/// The targets for trackproxy, judged with logging on.
struct Targets {
    /// Requests per proxy CPU-second, at least this × nginx's.
    cpu_vs_nginx: f64,
    /// … and at least this × HAProxy's, where there is a target.
    cpu_vs_haproxy: Option<f64>,
}

fn targets(s: Scenario) -> Targets {
    match s {
        Scenario::H1Keepalive | Scenario::H2 => Targets {
            cpu_vs_nginx: 1.2,
            cpu_vs_haproxy: Some(1.0),
        },
        Scenario::H1NewConnection | Scenario::H1NewConnectionNagle => Targets {
            cpu_vs_nginx: 2.5,
            cpu_vs_haproxy: None,
        },
    }
}

/// Rounds the targets are meant for.
const TARGET_ROUNDS: usize = 5;

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn progress_line(r: &Run, rounds: usize) -> String {
    let mut s = format!(
        "round {}/{rounds} log {:<3} {:<5} {:<23} {:<10} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  {:>7.0} req/CPU-s  errors {}  RSS {:.1} MiB  upstream conns {}  other load {:.0}%",
        r.round + 1,
        r.case.logging,
        r.case.upstream,
        r.case.scenario.name(),
        r.proxy,
        r.rps,
        r.p50_ms,
        r.p99_ms,
        r.per_cpu_s,
        r.errors,
        r.peak_rss_mib,
        r.upstream_conns,
        r.other_cpu * 100.0
    );
    if let Some(log) = r.log {
        let _ = write!(
            s,
            "  log lines {}/{} answered, logged p99 {:.2} ms (upstream {:.2})",
            log.lines, r.answered, log.p99_ms, log.upstream_p99_ms
        );
    }
    if r.case.scenario.new_connections() {
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

/// Median with its spread over rounds: `12 345 (11 900–12 800)`; `—` when there is nothing.
fn spread(v: &[f64], decimals: usize) -> String {
    if v.is_empty() {
        return "—".to_owned();
    }
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

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The runs of one proxy on one case.
fn runs_of(runs: &[Run], case: Case, proxy: Which) -> Vec<&Run> {
    runs.iter()
        .filter(|r| r.case == case && r.proxy == proxy)
        .collect()
}

/// The cases of `args` with one logging mode, in the order they ran.
fn cases(args: &Args, logging: Logging) -> Vec<Case> {
    args.cases()
        .into_iter()
        .filter(|c| c.logging == logging)
        .collect()
}

pub(crate) fn report(runs: &[Run], idle: &[Idle], args: &Args) -> String {
    let mut out = String::new();
    if args.smoke {
        let _ = writeln!(
            out,
            "\nSMOKE RUN: a functional check. One short round (and, under `cargo test`, debug builds): the figures below are not a measurement."
        );
    }
    let _ = writeln!(
        out,
        "\n{} round(s), {} s measured per case and proxy (medians; min–max over rounds in brackets){}",
        args.rounds,
        args.duration,
        if args.rounds < TARGET_ROUNDS {
            format!("; the targets are for medians of at least {TARGET_ROUNDS} rounds")
        } else {
            String::new()
        }
    );
    for &logging in &args.logging {
        let _ = match logging {
            Logging::On => writeln!(
                out,
                "\n## Logging on: every proxy logs every request (trackproxy as shipped, nginx buffered, HAProxy to stdout); the targets apply here\n"
            ),
            Logging::Off => writeln!(
                out,
                "\n## Logging off (secondary): no proxy logs requests; no targets\n"
            ),
        };
        measurements(&mut out, runs, args, logging);
        ratios(&mut out, runs, args, logging);
        if logging == Logging::On {
            logged_latency(&mut out, runs, args);
        }
    }
    nagle(&mut out, runs, args);
    idle_table(&mut out, idle, args);
    footer(&mut out, runs, args);
    out
}

fn measurements(out: &mut String, runs: &[Run], args: &Args, logging: Logging) {
    let _ = writeln!(
        out,
        "| scenario | upstream | proxy | requests/s | p50 ms | p99 ms | p99.9 ms | errors | proxy CPU s | requests per proxy CPU-s | peak RSS MiB | upstream conns |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for case in cases(args, logging) {
        for &p in &args.proxies {
            let rs = runs_of(runs, case, p);
            if rs.is_empty() {
                continue;
            }
            let f = |g: fn(&Run) -> f64| rs.iter().map(|r| g(r)).collect::<Vec<f64>>();
            let _ = writeln!(
                out,
                "| {} | {} | {p} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {} | {:.1} | {:.0} |",
                case.scenario.name(),
                case.upstream,
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
}

/// trackproxy ÷ a reference proxy, per round in which both ran the case.
fn ratio(runs: &[Run], case: Case, reference: Which, g: fn(&Run) -> f64) -> Vec<f64> {
    let by_round = |p: Which| -> BTreeMap<usize, &Run> {
        runs_of(runs, case, p)
            .into_iter()
            .map(|r| (r.round, r))
            .collect()
    };
    let reference = by_round(reference);
    by_round(Which::Trackproxy)
        .iter()
        .filter_map(|(round, t)| reference.get(round).map(|n| g(t) / g(n)))
        .collect()
}

fn ratios(out: &mut String, runs: &[Run], args: &Args, logging: Logging) {
    if !args.proxies.contains(&Which::Trackproxy) || args.proxies.len() < 2 {
        return;
    }
    let judged = logging == Logging::On;
    let _ = writeln!(
        out,
        "\ntrackproxy ÷ nginx and ÷ HAProxy, per round (median, min–max){}:\n",
        if judged { ", with the targets" } else { "" }
    );
    if judged {
        let _ = writeln!(
            out,
            "| scenario | upstream | requests per CPU-s ÷ nginx | target | ÷ HAProxy | target | p99 ÷ nginx | target | p99 ÷ HAProxy | peak RSS ÷ nginx | target |\n|---|---|---:|---|---:|---|---:|---|---:|---:|---|"
        );
    } else {
        let _ = writeln!(
            out,
            "| scenario | upstream | requests per CPU-s ÷ nginx | ÷ HAProxy | p99 ÷ nginx | p99 ÷ HAProxy | peak RSS ÷ nginx |\n|---|---|---:|---:|---:|---:|---:|"
        );
    }
    for case in cases(args, logging) {
        if runs_of(runs, case, Which::Trackproxy).is_empty() {
            continue;
        }
        let cpu_n = ratio(runs, case, Which::Nginx, |r| r.per_cpu_s);
        let cpu_h = ratio(runs, case, Which::Haproxy, |r| r.per_cpu_s);
        let p99_n = ratio(runs, case, Which::Nginx, |r| r.p99_ms);
        let p99_h = ratio(runs, case, Which::Haproxy, |r| r.p99_ms);
        let rss_n = ratio(runs, case, Which::Nginx, |r| r.peak_rss_mib);
        let (scenario, upstream) = (case.scenario.name(), case.upstream);
        if !judged {
            let _ = writeln!(
                out,
                "| {scenario} | {upstream} | {} | {} | {} | {} | {} |",
                spread(&cpu_n, 2),
                spread(&cpu_h, 2),
                spread(&p99_n, 2),
                spread(&p99_h, 2),
                spread(&rss_n, 2),
            );
            continue;
        }
        let t = targets(case.scenario);
        // A target against a proxy that did not run is not judged.
        let judge = |v: &[f64], ok: fn(f64, f64) -> bool, bound: f64, sign: &str| {
            if v.is_empty() {
                format!("{sign} {bound:.1}")
            } else {
                format!("{sign} {bound:.1}: {}", met(ok(median(v.to_vec()), bound)))
            }
        };
        let at_least = |m: f64, b: f64| m >= b;
        let at_most = |m: f64, b: f64| m <= b;
        let _ = writeln!(
            out,
            "| {scenario} | {upstream} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            spread(&cpu_n, 2),
            judge(&cpu_n, at_least, t.cpu_vs_nginx, "≥"),
            spread(&cpu_h, 2),
            t.cpu_vs_haproxy
                .map_or_else(|| "—".to_owned(), |b| judge(&cpu_h, at_least, b, "≥")),
            spread(&p99_n, 2),
            judge(&p99_n, at_most, 1.0, "≤"),
            spread(&p99_h, 2),
            spread(&rss_n, 2),
            judge(&rss_n, at_most, 1.0, "≤"),
        );
    }
}

/// The latency the client saw beside what each proxy logged for the same requests: how much
/// of the tail is spent between the request head and the response's end (inside the proxy
/// and the upstream) and how much outside (the client's socket, the kernel, scheduling before
/// the proxy reads the request).
fn logged_latency(out: &mut String, runs: &[Run], args: &Args) {
    let _ = writeln!(
        out,
        "\nLatency seen by the client and logged by the proxy (request head to response end; nginx and HAProxy log whole milliseconds; the log includes the warm-up), ms, medians over rounds:\n\n| scenario | upstream | proxy | client p50 | client p99 | logged p50 | logged p99 | logged upstream p99 |\n|---|---|---|---:|---:|---:|---:|---:|"
    );
    for case in cases(args, Logging::On) {
        for &p in &args.proxies {
            let rs = runs_of(runs, case, p);
            let logs: Vec<LogStats> = rs.iter().filter_map(|r| r.log).collect();
            if logs.is_empty() {
                continue;
            }
            let client = |g: fn(&Run) -> f64| median(rs.iter().map(|r| g(r)).collect());
            let logged = |g: fn(&LogStats) -> f64| median(logs.iter().map(g).collect());
            let _ = writeln!(
                out,
                "| {} | {} | {p} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                case.scenario.name(),
                case.upstream,
                client(|r| r.p50_ms),
                client(|r| r.p99_ms),
                logged(|l| l.p50_ms),
                logged(|l| l.p99_ms),
                logged(|l| l.upstream_p99_ms),
            );
        }
    }
}

/// New connections from clients with Nagle's algorithm on: their latency, the point of the
/// scenario, on its own.
fn nagle(out: &mut String, runs: &[Run], args: &Args) {
    if !args.scenarios.contains(&Scenario::H1NewConnectionNagle) {
        return;
    }
    let _ = writeln!(
        out,
        "\nNew TLS connections from 8 clients with Nagle's algorithm on (no TCP_NODELAY, like Python's ssl over socket.create_connection): a server that sends nothing between the client's TLS 1.3 Finished and its response makes each request wait for a delayed ACK (~40 ms). Latency in ms, medians over rounds:\n\n| logging | upstream | proxy | p50 | p99 |\n|---|---|---|---:|---:|"
    );
    for &logging in &args.logging {
        for &upstream in &args.upstreams {
            let case = Case {
                logging,
                upstream,
                scenario: Scenario::H1NewConnectionNagle,
            };
            for &p in &args.proxies {
                let rs = runs_of(runs, case, p);
                if rs.is_empty() {
                    continue;
                }
                let lat = |g: fn(&Run) -> f64| median(rs.iter().map(|r| g(r)).collect());
                let _ = writeln!(
                    out,
                    "| {logging} | {upstream} | {p} | {:.2} | {:.2} |",
                    lat(|r| r.p50_ms),
                    lat(|r| r.p99_ms),
                );
            }
        }
    }
}

fn idle_table(out: &mut String, idle: &[Idle], args: &Args) {
    if idle.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nMemory with idle keep-alive TLS connections ({}; logging {}, upstream {}; one request made on each, then idle):\n\n| proxy | idle connections | RSS before MiB | RSS with them MiB | KiB per connection | target |\n|---|---:|---:|---:|---:|---|",
        if args.idle_h2 { "HTTP/2" } else { "HTTP/1.1" },
        args.logging[0],
        args.upstreams.first().copied().unwrap_or(Scheme::Https),
    );
    for m in idle {
        let per = (m.rss_mib - m.base_mib) * 1024.0 / m.connections.max(1) as f64;
        let target = if m.proxy == Which::Trackproxy && m.connections >= 10_000 {
            format!("< 100 MiB: {}", met(m.rss_mib < 100.0))
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

fn footer(out: &mut String, runs: &[Run], args: &Args) {
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
    let logged: Vec<&Run> = runs.iter().filter(|r| r.log.is_some()).collect();
    for &p in &args.proxies {
        let (lines, answered) = logged
            .iter()
            .filter(|r| r.proxy == p)
            .fold((0, 0), |(l, a), r| {
                (l + r.log.map_or(0, |l| l.lines), a + r.answered)
            });
        if answered > 0 {
            let _ = writeln!(
                out,
                "Access log, {p}: {lines} request lines for {answered} requests answered (warm-up included)."
            );
        }
    }
    for s in args.scenarios.iter().filter(|s| s.new_connections()) {
        for &p in &args.proxies {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| r.case.scenario == *s && r.proxy == p)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let add = |a: Handshakes, h: Handshakes| Handshakes {
                full: a.full + h.full,
                resumed: a.resumed + h.resumed,
            };
            let c = rs
                .iter()
                .fold(Handshakes::default(), |a, r| add(a, r.client_handshakes));
            let server = rs
                .iter()
                .map(|r| r.server_handshakes)
                .try_fold(Handshakes::default(), |a, h| h.map(|h| add(a, h)));
            let _ = writeln!(
                out,
                "{} handshakes, {p}: client {} full / {} resumed; server {}.",
                s.name(),
                c.full,
                c.resumed,
                server.map_or_else(
                    || "not counted".to_owned(),
                    |h| format!("{} full / {} resumed", h.full, h.resumed)
                )
            );
        }
    }
}
