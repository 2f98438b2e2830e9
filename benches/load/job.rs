//! What the load harness and `examples/per_request.rs` share: trackproxy's configuration for the
//! job, the tracked-link targets, and the headers a browser sends with them.

use http::{HeaderMap, HeaderValue, header};

use crate::pki::{HOST, Pki};

/// trackproxy's configuration: listeners on the given loopback ports, `upstream` (an
/// `https://` or `http://` URL), the harness's certificate; `log_level` sets `log.level`, and
/// `None` keeps the shipped default (`info`: the access log on, JSON lines to stdout).
///
/// Idle and header-read timeouts are long enough for the idle-connections measurement. Every
/// client of the harness is 127.0.0.1: the per-client connection cap is off (10 000 idle
/// connections from one address) and the rate limit is set out of reach, so its check still runs
/// on every request.
pub(crate) fn trackproxy_config(
    pki: &Pki,
    upstream: &str,
    https: u16,
    http: u16,
    admin: u16,
    log_level: Option<&str>,
) -> String {
    let log = log_level.map_or_else(String::new, |level| {
        format!("\n[log]\nformat = \"json\"\nlevel = {level:?}\n")
    });
    format!(
        r#"[server]
https_listen = "127.0.0.1:{https}"
http_listen = "127.0.0.1:{http}"
idle_timeout = "600s"
header_read_timeout = "600s"
shutdown_grace = "2s"

[upstream]
url = "{upstream}"
ca_file = {ca:?}
pool_max_idle = 1024

[[hosts]]
name = "{HOST}"

[[tls.certificates]]
cert = {cert:?}
key = {key:?}

[limits]
per_client_rps = 1000000
per_client_burst = 1000000
per_client_connections = 0

[admin]
listen = "127.0.0.1:{admin}"
{log}"#,
        ca = pki.ca.display().to_string(),
        cert = pki.proxy_cert.display().to_string(),
        key = pki.proxy_key.display().to_string(),
    )
}

/// The path and query of a click and of an open: SendGrid-like `upn` tokens of ~450
/// base64url-ish characters.
pub(crate) fn targets() -> (String, String) {
    let token: String = "Nn3Fm1-xYQ2p_Zt0aLkVhB9wUe7Rc4dJ5sGi6oTqX8yH"
        .chars()
        .cycle()
        .take(450)
        .collect();
    (
        format!("/ls/click?upn=u001.{token}"),
        format!("/wf/open?upn=u001.{token}"),
    )
}

/// The headers a desktop browser sends with a click.
pub(crate) fn browser_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        (
            header::USER_AGENT,
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like \
             Gecko) Chrome/126.0.0.0 Safari/537.36",
        ),
        (
            header::ACCEPT,
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        ),
        (header::ACCEPT_LANGUAGE, "en-GB,en;q=0.9"),
        (header::ACCEPT_ENCODING, "gzip, deflate, br"),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    headers
}
