//! The admin endpoints from a test: plain HTTP GETs, and `/metrics` parsed as Prometheus text
//! (strictly: every line must be a HELP, TYPE or sample line) with lookups by name and labels.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_parse::{LineInfo, Scrape, Value};

/// GET `path` on the admin listener: (status, content type, body).
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String, String) {
    let res = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, res.text().await.unwrap())
}

/// One scrape of `/metrics`.
pub struct Metrics {
    pub text: String,
    pub scrape: Scrape,
}

/// Scrapes `/metrics` and checks it is the Prometheus text format.
pub async fn scrape(admin: SocketAddr) -> Metrics {
    let (status, ct, text) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Ignored => panic!("not a Prometheus text line: {line:?}\n{text}"),
            LineInfo::Sample { value, .. } => {
                assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
            }
            _ => {}
        }
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(!scrape.samples.is_empty());
    Metrics { text, scrape }
}

impl Metrics {
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Value> {
        self.scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .map(|s| &s.value)
    }

    /// A counter's or gauge's value with exactly these labels; 0 when the series is absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(name, labels) {
            None => 0.0,
            Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
            Some(other) => panic!("{name} is not a counter or gauge: {other:?}"),
        }
    }

    /// Whether a series with exactly these labels exists.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.find(name, labels).is_some()
    }

    /// A histogram's observation count (its `+Inf` bucket); 0 when absent.
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(name, labels) {
            None => 0.0,
            Some(Value::Histogram(buckets)) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            Some(other) => panic!("{name} is not a histogram: {other:?}"),
        }
    }
}
