//! Criterion micro-benchmarks of the per-request hot path: the steps trackproxy runs for every
//! request before and after the upstream round trip.
//!
//! ```sh
//! cargo bench --bench hot_path            # all of them
//! cargo bench --bench hot_path -- route   # only routing
//! ```
//!
//! The inputs look like real traffic: an email client's click with a ~450-character `upn`
//! token, a browser's request headers, and sendgrid.net's 302 answer. `cargo test` runs each
//! benchmark once as a check that it still works (criterion's test mode).

#![allow(missing_docs, clippy::unwrap_used)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Request, Version};
use trackproxy::bench_api;
use trackproxy::bench_api::Routes;
use trackproxy::config::{Source, load_with_env};

const HOST: &str = "url1234.example.com";

/// A click as an email client sends it: long opaque token, browser headers.
fn click_request(version: Version) -> Request<()> {
    let upn = "u001.".to_owned() + &"AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_".repeat(12);
    let target = format!("/ls/click?upn={upn}");
    let uri = if version == Version::HTTP_2 {
        format!("https://{HOST}{target}")
    } else {
        target
    };
    let mut b = Request::builder().version(version).uri(uri);
    if version != Version::HTTP_2 {
        b = b.header("host", HOST);
    }
    for (k, v) in browser_headers() {
        b = b.header(k, v);
    }
    b.body(()).unwrap()
}

fn browser_headers() -> [(&'static str, &'static str); 6] {
    [
        (
            "user-agent",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/126.0.0.0 Safari/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("upgrade-insecure-requests", "1"),
        ("connection", "keep-alive"),
    ]
}

/// The headers sendgrid.net answers a click with.
fn upstream_response_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("server", "nginx"),
        ("date", "Mon, 01 Jul 2024 12:00:00 GMT"),
        ("content-type", "text/html; charset=utf-8"),
        ("content-length", "58"),
        ("connection", "keep-alive"),
        (
            "location",
            "https://www.example.com/landing?utm_source=sendgrid&utm_medium=email&x=%2F%20",
        ),
        ("set-cookie", "sg_a=1; Path=/; Secure"),
        ("set-cookie", "sg_b=2; Path=/; HttpOnly"),
        (
            "strict-transport-security",
            "max-age=600; includeSubDomains",
        ),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    h
}

/// No `TRACKPROXY__…` overrides from the environment.
fn trackproxy_env_none() -> config::Map<String, String> {
    config::Map::new()
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    let h1 = click_request(Version::HTTP_11);
    let h2 = click_request(Version::HTTP_2);
    g.bench_function("target_h1_host_header", |b| {
        b.iter(|| bench_api::target(black_box(&h1), true).unwrap());
    });
    g.bench_function("target_h2_authority", |b| {
        b.iter(|| bench_api::target(black_box(&h2), true).unwrap());
    });

    // A deployment with 50 branded hosts.
    let mut toml = String::from("[upstream]\nurl = \"https://sendgrid.net\"\n");
    for i in 0..50 {
        let _ = writeln!(toml, "[[hosts]]\nname = \"url{i}.example.com\"");
    }
    let _ = writeln!(toml, "[[hosts]]\nname = \"{HOST}\"");
    let cfg = load_with_env(
        &Source::Text {
            label: "bench.toml",
            toml: &toml,
        },
        Some(trackproxy_env_none()),
    )
    .unwrap();
    let routes = Routes::from_config(&cfg);
    g.bench_function("lookup_51_hosts", |b| {
        b.iter(|| routes.get(black_box(HOST)).unwrap());
    });
    g.finish();
}

fn header_rewriting(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    let req = click_request(Version::HTTP_11);
    let host = bench_api::target(&req, true).unwrap().host_header().clone();
    let client: IpAddr = "203.0.113.7".parse().unwrap();
    g.bench_function("prepare_request", |b| {
        b.iter_batched_ref(
            || req.headers().clone(),
            |h| bench_api::prepare_request(h, client, false, true, &host),
            BatchSize::SmallInput,
        );
    });
    let mut from_lb = req.headers().clone();
    from_lb.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
    g.bench_function("prepare_request_trusted_xff", |b| {
        b.iter_batched_ref(
            || from_lb.clone(),
            |h| bench_api::prepare_request(h, client, true, true, &host),
            BatchSize::SmallInput,
        );
    });
    let res = upstream_response_headers();
    g.bench_function("prepare_response", |b| {
        b.iter_batched_ref(
            || res.clone(),
            bench_api::prepare_response,
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

// Rate-limit check: the per-client limiter lands with the middleware issue. Add its benchmark
// here (group "rate_limit": a check for a known client, and for a new one) once
// `bench_api` exposes it.

criterion_group!(benches, routing, header_rewriting);
criterion_main!(benches);
