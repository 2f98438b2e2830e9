//! Prometheus metrics, through the `metrics` facade and
//! `metrics-exporter-prometheus`.
//!
//! Every [`crate::App`] owns its own recorder ([`Metrics`]), rather than installing one global
//! recorder: several proxies in one process (the integration tests) keep their counters apart,
//! and a test can assert exact deltas on the `/metrics` of the proxy it started. Handles
//! (`Counter`, `Histogram`, `Gauge`) are registered once — at start, or the first time a label
//! combination is seen — and then updated with a single atomic operation: the request path never
//! looks a metric up by name and never allocates for it.
//!
//! Values that already live elsewhere (open connections, requests in flight, upstream connections
//! opened, clients tracked by the rate limiter, dropped log lines) are not counted twice: they
//! are copied into the recorder when `/metrics` is scraped ([`Snapshot`]).
//!
//! The names are listed in the README ("Metrics").

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram, with_local_recorder,
};
use http::{Method, StatusCode};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::error::ProxyError;

/// `trackproxy_requests_total{host, method, status}`: responses sent, by host, method and status
/// class (`2xx`, …).
pub(crate) const REQUESTS: &str = "trackproxy_requests_total";
/// `trackproxy_request_duration_seconds{host}`: from the request head to the end of the response
/// body.
pub(crate) const REQUEST_DURATION: &str = "trackproxy_request_duration_seconds";
/// `trackproxy_upstream_duration_seconds{host}`: from sending to the upstream to its response
/// head.
pub(crate) const UPSTREAM_DURATION: &str = "trackproxy_upstream_duration_seconds";
/// `trackproxy_open_connections`: client connections open on the HTTPS and HTTP listeners.
pub(crate) const OPEN_CONNECTIONS: &str = "trackproxy_open_connections";
/// `trackproxy_parked_connections`: idle HTTP/1 connections holding no HTTP buffers.
pub(crate) const PARKED_CONNECTIONS: &str = "trackproxy_parked_connections";
/// `trackproxy_in_flight_requests`: requests being served.
pub(crate) const IN_FLIGHT: &str = "trackproxy_in_flight_requests";
/// `trackproxy_connections_refused_total{reason}`: connections closed before the TLS handshake.
pub(crate) const CONNECTIONS_REFUSED: &str = "trackproxy_connections_refused_total";
/// `trackproxy_accept_paused_total`: times accepting paused at `limits.max_connections`.
pub(crate) const ACCEPT_PAUSED: &str = "trackproxy_accept_paused_total";
/// `trackproxy_tls_handshakes_total{kind}`: completed handshakes, `full` or `resumed`.
pub(crate) const TLS_HANDSHAKES: &str = "trackproxy_tls_handshakes_total";
/// `trackproxy_tls_handshake_failures_total{reason}`: failed handshakes, by
/// [`HandshakeFailure`].
pub(crate) const TLS_HANDSHAKE_FAILURES: &str = "trackproxy_tls_handshake_failures_total";
/// `trackproxy_rate_limited_total`: requests answered 429.
pub(crate) const RATE_LIMITED: &str = "trackproxy_rate_limited_total";
/// `trackproxy_rate_limit_clients`: clients the rate limiter currently remembers.
pub(crate) const RATE_LIMIT_CLIENTS: &str = "trackproxy_rate_limit_clients";
/// `trackproxy_requests_shed_total`: requests answered 503 because `limits.max_in_flight` was
/// reached.
pub(crate) const SHED: &str = "trackproxy_requests_shed_total";
/// `trackproxy_upstream_errors_total{kind}`: failed upstream requests, by
/// [`ProxyError::kind`].
pub(crate) const UPSTREAM_ERRORS: &str = "trackproxy_upstream_errors_total";
/// `trackproxy_client_errors_total{kind}`: requests refused or failed by the client's fault, by
/// kind ([`CLIENT_ERROR_KINDS`]; 429s have their own counter).
pub(crate) const CLIENT_ERRORS: &str = "trackproxy_client_errors_total";
/// The `kind` values of [`CLIENT_ERRORS`]: [`ProxyError::kind`] of the client-side errors, and
/// what hyper refuses before a request reaches the stack (`malformed_request`: an unparsable
/// request line or header; `header_too_large`: 431).
pub(crate) const CLIENT_ERROR_KINDS: [&str; 8] = [
    "bad_request",
    "method_not_allowed",
    "unknown_host",
    "misdirected",
    "bad_request_body",
    "client_aborted",
    "malformed_request",
    "header_too_large",
];
/// `trackproxy_upstream_connections_opened_total`: TCP (+TLS) connections opened to upstreams.
pub(crate) const UPSTREAM_CONNECTIONS: &str = "trackproxy_upstream_connections_opened_total";
/// `trackproxy_certificate_expiry_timestamp_seconds{host, source}`: the served certificate's
/// not-after, as a Unix timestamp.
pub(crate) const CERT_EXPIRY: &str = "trackproxy_certificate_expiry_timestamp_seconds";

/// `trackproxy_acme_events_total{host, event}`: ACME certificates issued, renewed, and orders
/// failed.
pub(crate) const ACME_EVENTS: &str = "trackproxy_acme_events_total";
/// `trackproxy_acme_store_errors_total{op}`: failed operations on the shared ACME store
/// (`tls.acme.store`), by operation.
pub(crate) const ACME_STORE_ERRORS: &str = "trackproxy_acme_store_errors_total";
/// `trackproxy_acme_lock_waits_total{host}`: times a replica found a host's order lock held by
/// another replica and waited for its result.
pub(crate) const ACME_LOCK_WAITS: &str = "trackproxy_acme_lock_waits_total";
/// `trackproxy_log_lines_dropped_total`: log lines dropped because the log writer fell behind.
pub(crate) const LOG_LINES_DROPPED: &str = "trackproxy_log_lines_dropped_total";

/// The `host` label of requests for a host that is not configured (421/404 answers): it cannot
/// be a host name, so it never collides with one.
pub(crate) const UNKNOWN_HOST: &str = "(unknown)";

/// Histogram buckets for latencies, seconds: from a local answer to a slow upstream.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why a TLS handshake failed; the values double as the `failure` field of the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No valid `ClientHello` arrived (not TLS, or the client went away).
    ClientHello,
    /// The handshake did not finish within `server.handshake_timeout`.
    Timeout,
    /// The client sent no SNI.
    NoSni,
    /// The SNI names a host that is not served.
    UnknownSni,
    /// The SNI names an ACME host whose first certificate is not issued yet.
    CertificatePending,
    /// The handshake failed after the `ClientHello` (no common version or cipher, bad alert, …).
    Handshake,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::ClientHello,
        HandshakeFailure::Timeout,
        HandshakeFailure::NoSni,
        HandshakeFailure::UnknownSni,
        HandshakeFailure::CertificatePending,
        HandshakeFailure::Handshake,
    ];

    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::ClientHello => "client_hello",
            HandshakeFailure::Timeout => "handshake_timeout",
            HandshakeFailure::NoSni => "no_sni",
            HandshakeFailure::UnknownSni => "unknown_sni",
            HandshakeFailure::CertificatePending => "certificate_pending",
            HandshakeFailure::Handshake => "handshake",
        }
    }
}

/// Method label values; anything else is `OTHER` (bounded cardinality).
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "OTHER",
];
/// Status class label values; codes outside 100–599 are `other`.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::OPTIONS => 5,
        Method::PATCH => 6,
        _ => 7,
    }
}

fn class_index(s: StatusCode) -> usize {
    match s.as_u16() / 100 {
        c @ 1..=5 => usize::from(c - 1),
        _ => 5,
    }
}

/// Values owned by other parts of the proxy, copied into the recorder at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Client connections open.
    pub open_connections: usize,
    /// Of those, idle HTTP/1 connections parked without HTTP buffers.
    pub parked_connections: usize,
    /// Requests being served.
    pub in_flight: usize,
    /// Upstream connections opened since start.
    pub upstream_connections_opened: u64,
    /// Clients the rate limiter remembers.
    pub rate_limit_clients: usize,
    /// Log lines dropped since start.
    pub log_lines_dropped: u64,
}

/// The metrics of one proxy: its recorder, and handles for everything the hot path updates.
/// Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Configured host → its handles; grows when a reload adds hosts.
    hosts: arc_swap::ArcSwap<HashMap<Box<str>, Arc<HostMetrics>>>,
    /// Handles shared by every host that is not configured ([`UNKNOWN_HOST`]).
    unknown: Arc<HostMetrics>,
    fixed: Fixed,
}

/// Handles whose labels are known at start: registered at once, so they are exported (at 0)
/// before anything happens, as alerting rules on `rate()` expect.
struct Fixed {
    tls_full: Counter,
    tls_resumed: Counter,
    handshake_failures: [Counter; HandshakeFailure::ALL.len()],
    refused_per_client: Counter,
    accept_paused: Counter,
    rate_limited: Counter,
    shed: Counter,
    upstream_connect: Counter,
    upstream_request: Counter,
    upstream_timeout: Counter,
    client_errors: [Counter; CLIENT_ERROR_KINDS.len()],
    open_connections: Gauge,
    parked_connections: Gauge,
    in_flight: Gauge,
    upstream_connections: Counter,
    rate_limit_clients: Gauge,
    log_lines_dropped: Counter,
}

impl Fixed {
    /// Registers the handles; call inside `with_local_recorder`.
    fn register() -> Self {
        let failure =
            |f: HandshakeFailure| counter!(TLS_HANDSHAKE_FAILURES, "reason" => f.as_str());
        let upstream_error = |kind: &'static str| counter!(UPSTREAM_ERRORS, "kind" => kind);
        Fixed {
            tls_full: counter!(TLS_HANDSHAKES, "kind" => "full"),
            tls_resumed: counter!(TLS_HANDSHAKES, "kind" => "resumed"),
            handshake_failures: HandshakeFailure::ALL.map(failure),
            refused_per_client: counter!(CONNECTIONS_REFUSED, "reason" => "per_client_limit"),
            accept_paused: counter!(ACCEPT_PAUSED),
            rate_limited: counter!(RATE_LIMITED),
            shed: counter!(SHED),
            upstream_connect: upstream_error("upstream_connect"),
            upstream_request: upstream_error("upstream_request"),
            upstream_timeout: upstream_error("upstream_timeout"),
            client_errors: CLIENT_ERROR_KINDS.map(|kind| counter!(CLIENT_ERRORS, "kind" => kind)),
            open_connections: gauge!(OPEN_CONNECTIONS),
            parked_connections: gauge!(PARKED_CONNECTIONS),
            in_flight: gauge!(IN_FLIGHT),
            upstream_connections: counter!(UPSTREAM_CONNECTIONS),
            rate_limit_clients: gauge!(RATE_LIMIT_CLIENTS),
            log_lines_dropped: counter!(LOG_LINES_DROPPED),
        }
    }
}

/// Per-host handles, registered the first time a label combination is used so that `/metrics`
/// only lists what happened.
struct HostMetrics {
    label: Box<str>,
    requests: [[OnceLock<Counter>; CLASSES.len()]; METHODS.len()],
    duration: OnceLock<Histogram>,
    upstream: OnceLock<Histogram>,
}

impl HostMetrics {
    fn new(label: &str) -> Arc<Self> {
        Arc::new(HostMetrics {
            label: Box::from(label),
            requests: Default::default(),
            duration: OnceLock::new(),
            upstream: OnceLock::new(),
        })
    }
}

/// A host's metrics as seen by one request: which host, and the registry they live in.
#[derive(Clone)]
pub struct HostHandle {
    metrics: Metrics,
    host: Arc<HostMetrics>,
}

impl Metrics {
    /// A fresh recorder for a proxy serving `hosts` (lower case).
    ///
    /// # Panics
    /// Never: the histogram bucket lists are non-empty constants.
    #[must_use]
    pub fn new<'a>(hosts: impl IntoIterator<Item = &'a str>) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), &LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(UPSTREAM_DURATION.into()), &LATENCY_BUCKETS)
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        let hosts = hosts
            .into_iter()
            .map(|h| (Box::from(h), HostMetrics::new(h)))
            .collect();
        let fixed = with_local_recorder(&recorder, || {
            describe();
            Fixed::register()
        });
        let inner = Inner {
            recorder,
            handle,
            hosts: arc_swap::ArcSwap::from_pointee(hosts),
            unknown: HostMetrics::new(UNKNOWN_HOST),
            fixed,
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// The handles of `host` (lower case); unconfigured hosts share [`UNKNOWN_HOST`].
    #[must_use]
    pub fn host(&self, host: &str) -> HostHandle {
        let host = self
            .inner
            .hosts
            .load()
            .get(host)
            .cloned()
            .unwrap_or_else(|| self.inner.unknown.clone());
        HostHandle {
            metrics: self.clone(),
            host,
        }
    }

    /// Starts counting `hosts` under their own label (a reload added them); hosts already
    /// known keep their series.
    pub fn add_hosts<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        let current = self.inner.hosts.load();
        let mut next: HashMap<Box<str>, Arc<HostMetrics>> = (**current).clone();
        let mut added = false;
        for h in hosts {
            if !next.contains_key(h) {
                next.insert(Box::from(h), HostMetrics::new(h));
                added = true;
            }
        }
        if added {
            self.inner.hosts.store(Arc::new(next));
        }
    }

    /// A completed TLS handshake.
    pub fn tls_handshake(&self, resumed: bool) {
        if resumed {
            self.inner.fixed.tls_resumed.increment(1);
        } else {
            self.inner.fixed.tls_full.increment(1);
        }
    }

    /// A failed TLS handshake.
    pub fn tls_handshake_failed(&self, why: HandshakeFailure) {
        // `ALL` lists the variants in declaration order, so the discriminant is the index.
        self.inner.fixed.handshake_failures[why as usize].increment(1);
    }

    /// A connection closed before the handshake because its client has too many open.
    pub fn connection_refused_per_client(&self) {
        self.inner.fixed.refused_per_client.increment(1);
    }

    /// Accepting paused because `limits.max_connections` connections are open.
    pub fn accept_paused(&self) {
        self.inner.fixed.accept_paused.increment(1);
    }

    /// A request failed with `e` (called by the rescue layer, once per error response).
    pub fn request_error(&self, e: &ProxyError) {
        match e {
            ProxyError::RateLimited { .. } => self.inner.fixed.rate_limited.increment(1),
            ProxyError::Overloaded => self.inner.fixed.shed.increment(1),
            ProxyError::UpstreamConnect { .. } => self.inner.fixed.upstream_connect.increment(1),
            ProxyError::UpstreamRequest { .. } => self.inner.fixed.upstream_request.increment(1),
            ProxyError::UpstreamTimeout { .. } => self.inner.fixed.upstream_timeout.increment(1),
            ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::UnknownHost { .. }
            | ProxyError::Misdirected { .. }
            | ProxyError::HeadersTooLarge
            | ProxyError::UnsupportedTransferCoding
            | ProxyError::ClientBody(_)
            | ProxyError::ClientAborted(_) => self.client_error(e.kind()),
        }
    }

    /// A request refused or failed by the client's fault, `kind` one of
    /// [`CLIENT_ERROR_KINDS`] (another is a bug, counted as `bad_request`).
    pub fn client_error(&self, kind: &str) {
        let i = CLIENT_ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        self.inner.fixed.client_errors[i].increment(1);
    }

    /// Counts an ACME event for `host`: `issued`, `renewed` or `failed`.
    pub fn acme_event(&self, host: &str, event: &'static str) {
        with_local_recorder(&self.inner.recorder, || {
            counter!(ACME_EVENTS, "host" => host.to_owned(), "event" => event).increment(1);
        });
    }

    /// Counts a failed operation `op` on the shared ACME store.
    pub fn acme_store_error(&self, op: &'static str) {
        with_local_recorder(&self.inner.recorder, || {
            counter!(ACME_STORE_ERRORS, "op" => op).increment(1);
        });
    }

    /// Counts a wait for the order lock of `host`, held by another replica.
    pub fn acme_lock_wait(&self, host: &str) {
        with_local_recorder(&self.inner.recorder, || {
            counter!(ACME_LOCK_WAITS, "host" => host.to_owned()).increment(1);
        });
    }

    /// Sets the expiry gauge of the certificate served for `host`. `source` says where it came
    /// from: `file`, `self_signed` or `acme`.
    pub fn certificate_expiry(&self, host: &str, source: &'static str, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        with_local_recorder(&self.inner.recorder, || {
            gauge!(CERT_EXPIRY, "host" => host.to_owned(), "source" => source).set(secs);
        });
    }

    /// Folds more-expensive-to-collect data (histogram samples) into the exposition state.
    /// Call it every few seconds so histogram samples do not pile up between scrapes.
    pub fn upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    /// The Prometheus text exposition, with `snapshot` copied in first.
    #[must_use]
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let i = &self.inner.fixed;
        #[allow(clippy::cast_precision_loss)] // gauges are f64; counts stay far below 2^52
        {
            i.open_connections.set(snapshot.open_connections as f64);
            i.parked_connections.set(snapshot.parked_connections as f64);
            i.in_flight.set(snapshot.in_flight as f64);
            i.rate_limit_clients.set(snapshot.rate_limit_clients as f64);
        }
        i.upstream_connections
            .absolute(snapshot.upstream_connections_opened);
        i.log_lines_dropped.absolute(snapshot.log_lines_dropped);
        self.inner.handle.render()
    }
}

impl HostHandle {
    fn get(&self) -> &HostMetrics {
        &self.host
    }

    fn register<T>(&self, slot: &OnceLock<T>, make: impl FnOnce(&str) -> T) -> T
    where
        T: Clone,
    {
        slot.get_or_init(|| {
            with_local_recorder(&self.metrics.inner.recorder, || make(&self.get().label))
        })
        .clone()
    }

    /// A client-side error of this request (see [`Metrics::client_error`]).
    pub fn client_error(&self, kind: &str) {
        self.metrics.client_error(kind);
    }

    /// One response sent: counted by method and status class.
    pub fn request(&self, method: &Method, status: StatusCode) {
        let (m, c) = (method_index(method), class_index(status));
        let slot = &self.get().requests[m][c];
        if let Some(counter) = slot.get() {
            counter.increment(1);
        } else {
            self.register(slot, |host| {
                counter!(REQUESTS, "host" => host.to_owned(), "method" => METHODS[m], "status" => CLASSES[c])
            })
            .increment(1);
        }
    }

    /// The whole request took `d` (to the end of the response body).
    pub fn request_duration(&self, d: Duration) {
        let slot = &self.get().duration;
        match slot.get() {
            Some(h) => h.record(d),
            None => self
                .register(
                    slot,
                    |host| histogram!(REQUEST_DURATION, "host" => host.to_owned()),
                )
                .record(d),
        }
    }

    /// The upstream took `d` to send its response head.
    pub fn upstream_duration(&self, d: Duration) {
        let slot = &self.get().upstream;
        match slot.get() {
            Some(h) => h.record(d),
            None => self
                .register(
                    slot,
                    |host| histogram!(UPSTREAM_DURATION, "host" => host.to_owned()),
                )
                .record(d),
        }
    }
}

fn describe() {
    describe_counter!(
        REQUESTS,
        "Responses sent, by host, method and status class."
    );
    describe_histogram!(
        REQUEST_DURATION,
        ::metrics::Unit::Seconds,
        "Time from the request head to the end of the response body."
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        ::metrics::Unit::Seconds,
        "Time from sending the request upstream to the upstream's response head."
    );
    describe_gauge!(OPEN_CONNECTIONS, "Client connections open.");
    describe_gauge!(
        PARKED_CONNECTIONS,
        "Idle HTTP/1 client connections parked without HTTP buffers."
    );
    describe_gauge!(IN_FLIGHT, "Requests being served.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections closed before the TLS handshake, by reason."
    );
    describe_counter!(
        ACCEPT_PAUSED,
        "Times accepting paused because limits.max_connections connections were open."
    );
    describe_counter!(
        ACME_STORE_ERRORS,
        "Failed operations on the shared ACME store (tls.acme.store), by operation."
    );
    describe_counter!(
        ACME_LOCK_WAITS,
        "Times an ACME order lock was held by another replica and this one waited for its result."
    );
    describe_counter!(TLS_HANDSHAKES, "Completed TLS handshakes, full or resumed.");
    describe_counter!(TLS_HANDSHAKE_FAILURES, "Failed TLS handshakes, by reason.");
    describe_counter!(
        RATE_LIMITED,
        "Requests answered 429 by the per-client rate limit."
    );
    describe_gauge!(RATE_LIMIT_CLIENTS, "Clients the rate limiter remembers.");
    describe_counter!(
        SHED,
        "Requests answered 503 because limits.max_in_flight requests were in flight."
    );
    describe_counter!(UPSTREAM_ERRORS, "Failed upstream requests, by kind.");
    describe_counter!(
        CLIENT_ERRORS,
        "Requests refused or failed by the client's fault, by kind."
    );
    describe_counter!(UPSTREAM_CONNECTIONS, "Connections opened to upstreams.");
    describe_gauge!(
        CERT_EXPIRY,
        "Not-after of the certificate served for a host, as a Unix timestamp."
    );
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because the log writer could not keep up."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn each_instance_counts_on_its_own() {
        let a = Metrics::new(["a.example"]);
        let b = Metrics::new(["a.example"]);
        a.host("a.example").request(&Method::GET, StatusCode::FOUND);
        a.host("a.example").request(&Method::GET, StatusCode::FOUND);
        a.host("nope.example")
            .request(&Method::POST, StatusCode::MISDIRECTED_REQUEST);
        b.host("a.example").request(&Method::GET, StatusCode::OK);
        let ta = a.render(&Snapshot::default());
        let tb = b.render(&Snapshot::default());
        assert_eq!(
            sample(
                &ta,
                r#"trackproxy_requests_total{host="a.example",method="GET",status="3xx"}"#
            ),
            Some(2.0),
            "{ta}"
        );
        assert_eq!(
            sample(
                &ta,
                r#"trackproxy_requests_total{host="(unknown)",method="POST",status="4xx"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &tb,
                r#"trackproxy_requests_total{host="a.example",method="GET",status="3xx"}"#
            ),
            None
        );
        assert_eq!(
            sample(
                &tb,
                r#"trackproxy_requests_total{host="a.example",method="GET",status="2xx"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn fixed_series_are_present_from_the_start_and_snapshot_is_copied() {
        let m = Metrics::new(["a.example"]);
        m.tls_handshake(false);
        m.tls_handshake_failed(HandshakeFailure::UnknownSni);
        m.request_error(&ProxyError::Overloaded);
        m.request_error(&ProxyError::RateLimited {
            retry_after: Duration::from_secs(1),
        });
        let t = m.render(&Snapshot {
            open_connections: 7,
            parked_connections: 2,
            in_flight: 3,
            upstream_connections_opened: 11,
            rate_limit_clients: 5,
            log_lines_dropped: 0,
        });
        assert_eq!(
            sample(&t, r#"trackproxy_tls_handshakes_total{kind="full"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, r#"trackproxy_tls_handshakes_total{kind="resumed"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &t,
                r#"trackproxy_tls_handshake_failures_total{reason="unknown_sni"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &t,
                r#"trackproxy_tls_handshake_failures_total{reason="no_sni"}"#
            ),
            Some(0.0)
        );
        assert_eq!(sample(&t, "trackproxy_requests_shed_total "), Some(1.0));
        assert_eq!(sample(&t, "trackproxy_rate_limited_total "), Some(1.0));
        assert_eq!(sample(&t, "trackproxy_open_connections "), Some(7.0));
        assert_eq!(sample(&t, "trackproxy_parked_connections "), Some(2.0));
        assert_eq!(sample(&t, "trackproxy_in_flight_requests "), Some(3.0));
        assert_eq!(
            sample(&t, "trackproxy_upstream_connections_opened_total "),
            Some(11.0)
        );
        assert_eq!(sample(&t, "trackproxy_rate_limit_clients "), Some(5.0));
        assert!(
            t.contains("# TYPE trackproxy_requests_shed_total counter"),
            "{t}"
        );
    }

    #[test]
    fn latencies_are_histograms_with_buckets() {
        let m = Metrics::new(["a.example"]);
        let h = m.host("a.example");
        h.request_duration(Duration::from_millis(3));
        h.upstream_duration(Duration::from_millis(2));
        m.upkeep();
        let t = m.render(&Snapshot::default());
        assert!(
            t.contains("# TYPE trackproxy_request_duration_seconds histogram"),
            "{t}"
        );
        assert_eq!(
            sample(
                &t,
                r#"trackproxy_request_duration_seconds_bucket{host="a.example",le="0.005"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &t,
                r#"trackproxy_upstream_duration_seconds_bucket{host="a.example",le="0.001"}"#
            ),
            Some(0.0)
        );
        m.certificate_expiry(
            "a.example",
            "file",
            UNIX_EPOCH + Duration::from_secs(1_900_000_000),
        );
        let t = m.render(&Snapshot::default());
        assert_eq!(
            sample(
                &t,
                r#"trackproxy_certificate_expiry_timestamp_seconds{host="a.example",source="file"}"#
            ),
            Some(1_900_000_000.0)
        );
    }
}
