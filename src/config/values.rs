//! Value parsers: one untyped value (a TOML value, or the string of an environment variable)
//! to one typed value, or a message saying what was expected and what was found. They know
//! nothing of keys or files; the reader adds those.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Value, ValueKind};
use http::uri::Scheme;
use ipnet::IpNet;

use super::esp::{self, Esp};
use super::types::{ForwardCookies, UpstreamUrl, normalize_host_name};

pub(super) fn usize_from(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

pub(super) fn u32_from(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

pub(super) fn string(v: &Value) -> Result<String, String> {
    match &v.kind {
        ValueKind::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, found {}", kind_name(other))),
    }
}

fn kind_name(k: &ValueKind) -> &'static str {
    match k {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
            "an integer"
        }
        ValueKind::Float(_) => "a float",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "an array",
    }
}

pub(super) fn boolean(v: &Value) -> Result<bool, String> {
    match &v.kind {
        ValueKind::Boolean(b) => Ok(*b),
        ValueKind::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(format!("expected true or false, found {s:?}")),
        },
        other => Err(format!(
            "expected true or false, found {}",
            kind_name(other)
        )),
    }
}

pub(super) fn uint_in(v: &Value, min: u64, max: u64) -> Result<u64, String> {
    let n = match &v.kind {
        ValueKind::I64(n) => u64::try_from(*n).map_err(|_| format!("must be ≥ {min}"))?,
        ValueKind::U64(n) => *n,
        ValueKind::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("expected a whole number, found {s:?}"))?,
        other => {
            return Err(format!(
                "expected a whole number, found {}",
                kind_name(other)
            ));
        }
    };
    if n < min || n > max {
        return Err(format!("{n} is out of range ({min}..={max})"));
    }
    Ok(n)
}

/// A rate per second: 0 (off), or from one per day up to `max`.
pub(super) fn rate(v: &Value, max: f64) -> Result<f64, String> {
    #[allow(clippy::cast_precision_loss)] // config integers are far below 2^52
    let n = match &v.kind {
        ValueKind::Float(f) => *f,
        ValueKind::I64(n) => *n as f64,
        ValueKind::U64(n) => *n as f64,
        ValueKind::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("expected a number, found {s:?}"))?,
        other => return Err(format!("expected a number, found {}", kind_name(other))),
    };
    let min = 1.0 / 86_400.0;
    if n == 0.0 || (n.is_finite() && (min..=max).contains(&n)) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is out of range: 0 (off), or from {min:.6} (one per day) to {max}"
        ))
    }
}

pub(super) fn one_of<T: Copy>(v: &Value, options: &[(&str, T)]) -> Result<T, String> {
    let s = string(v)?;
    options
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
        .map(|(_, x)| *x)
        .ok_or_else(|| {
            let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
            format!("expected one of {}, found {s:?}", names.join(", "))
        })
}

pub(super) fn socket_addr(v: &Value) -> Result<SocketAddr, String> {
    let s = string(v)?;
    s.trim().parse().map_err(|_| {
        format!(
            "expected an address with a port such as \"0.0.0.0:443\" or \"[::]:443\", found {s:?}"
        )
    })
}

pub(super) fn duration(v: &Value) -> Result<Duration, String> {
    let s = string(v)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("expected a duration such as \"30s\" or \"1m 30s\", found {s:?} ({e})")
    })
}

pub(super) fn positive_duration(v: &Value) -> Result<Duration, String> {
    let d = duration(v)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

pub(super) fn ip_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("expected an IP address or CIDR such as \"10.0.0.0/8\", found {s:?}"))
}

/// A list of strings; a single string (from the environment) is split on commas.
pub(super) fn list<T>(
    v: &Value,
    item: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    match &v.kind {
        ValueKind::Array(items) => items.iter().map(|i| item(&string(i)?)).collect(),
        ValueKind::String(s) => s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(item)
            .collect(),
        other => Err(format!(
            "expected a list of strings, found {}",
            kind_name(other)
        )),
    }
}

pub(super) fn path(v: &Value) -> Result<PathBuf, String> {
    let s = string(v)?;
    if s.trim().is_empty() {
        return Err("expected a file path, found an empty string".into());
    }
    Ok(PathBuf::from(s))
}

pub(super) fn readable_file(v: &Value) -> Result<PathBuf, String> {
    let p = path(v)?;
    std::fs::File::open(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    Ok(p)
}

/// An ACME directory URL: `https://` with a host (RFC 8555 §6.1 requires HTTPS).
pub(super) fn acme_directory(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    let s = s.trim();
    let uri: http::Uri = s.parse().map_err(|e| {
        format!(
            "expected a URL such as \"https://acme-v02.api.letsencrypt.org/directory\", \
             found {s:?} ({e})"
        )
    })?;
    if uri.scheme() != Some(&Scheme::HTTPS) || uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "the directory URL must start with https:// and name a host, found {s:?}"
        ));
    }
    Ok(s.to_owned())
}

/// A PostgreSQL URL (`postgres://` or `postgresql://`) without a password in it: the
/// password comes from `store_password_file` or the environment, never from the URL.
pub(super) fn postgres_url(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    let s = s.trim();
    let Some(rest) = s
        .strip_prefix("postgres://")
        .or_else(|| s.strip_prefix("postgresql://"))
    else {
        return Err(
            "expected a URL such as \"postgres://trackproxy@db.internal:5432/trackproxy\"".into(),
        );
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && userinfo.contains(':')
    {
        return Err(
            "the URL holds a password (not shown): put it in store_password_file \
                    or TRACKPROXY__TLS__ACME__STORE_PASSWORD instead"
                .into(),
        );
    }
    if rest.contains("password=") {
        return Err("the URL holds a password parameter (not shown): put it in \
                    store_password_file or TRACKPROXY__TLS__ACME__STORE_PASSWORD instead"
            .into());
    }
    Ok(s.to_owned())
}

/// 64 hex digits as 32 bytes.
pub(super) fn hex32(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// An ACME account contact: `mailto:` and an address.
pub(super) fn mailto(s: &str) -> Result<String, String> {
    let s = s.trim();
    match s.strip_prefix("mailto:") {
        Some(addr) if addr.contains('@') && !addr.contains(char::is_whitespace) => Ok(s.to_owned()),
        _ => Err(format!(
            "expected a contact such as \"mailto:ops@example.com\", found {s:?}"
        )),
    }
}

pub(super) fn upstream_url(v: &Value) -> Result<UpstreamUrl, String> {
    let s = string(v)?;
    let uri: http::Uri = s.trim().parse().map_err(|e| {
        format!("expected a URL such as \"https://sendgrid.net\", found {s:?} ({e})")
    })?;
    let scheme = uri
        .scheme()
        .filter(|sc| **sc == Scheme::HTTPS || **sc == Scheme::HTTP)
        .cloned()
        .ok_or_else(|| format!("the URL must start with https:// (or http://), found {s:?}"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("the URL has no host: {s:?}"))?;
    if authority.as_str().contains('@') {
        return Err(format!("the URL must not contain credentials: {s:?}"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!(
            "the URL must not have a path or query (requests keep their own): {s:?}"
        ));
    }
    Ok(UpstreamUrl { scheme, authority })
}

/// An ESP preset name (`esp = "sparkpost"`).
pub(super) fn esp(v: &Value) -> Result<&'static Esp, String> {
    let s = string(v)?;
    esp::find(&s).ok_or_else(|| {
        format!(
            "unknown ESP {s:?}; known: {} (or set `upstream` to any URL)",
            esp::names()
        )
    })
}

/// An AWS region as in `r.us-east-1.awstrack.me`: lower-case letters, digits and `-`.
pub(super) fn region(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.split('-').count() >= 3
        && s.split('-').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "expected an AWS region such as \"us-east-1\" or \"eu-west-1\", found {s:?}"
        ))
    }
}

/// `forward_cookies = "all" | "none" | ["name", …]`.
pub(super) fn forward_cookies(v: &Value) -> Result<ForwardCookies, String> {
    if let ValueKind::String(s) = &v.kind {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" => return Ok(ForwardCookies::All),
            "none" => return Ok(ForwardCookies::None),
            // From the environment: a comma-separated list of names.
            _ => {}
        }
    }
    let names = list(v, |n| {
        let n = n.trim();
        // RFC 6265 §4.1.1: a cookie name is an RFC 2616 token.
        let token = !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if token {
            Ok(n.to_owned())
        } else {
            Err(format!(
                "expected \"all\", \"none\" or a list of cookie names, found {n:?}"
            ))
        }
    })?;
    Ok(ForwardCookies::Only(names))
}

/// `paths = "esp"` (the preset's known prefixes) or a list of path prefixes.
pub(super) fn path_prefixes(v: &Value, esp: &Esp) -> Result<Vec<String>, String> {
    if let ValueKind::String(s) = &v.kind
        && s.trim().eq_ignore_ascii_case("esp")
    {
        if esp.paths.is_empty() {
            return Err(format!(
                "{} has no known tracking paths in the presets; list the path prefixes \
                 instead, e.g. [\"/click/\", \"/open/\"]",
                esp.title
            ));
        }
        return Ok(esp.paths.iter().map(|p| (*p).to_owned()).collect());
    }
    list(v, |p| {
        let p = p.trim();
        if p.starts_with('/') && !p.contains(char::is_whitespace) {
            Ok(p.to_owned())
        } else {
            Err(format!(
                "expected \"esp\" or a list of path prefixes starting with '/', found {p:?}"
            ))
        }
    })
}

/// A directory that exists and can be listed.
pub(super) fn directory(v: &Value) -> Result<PathBuf, String> {
    let p = path(v)?;
    std::fs::read_dir(&p).map_err(|e| format!("cannot read the directory {}: {e}", p.display()))?;
    Ok(p)
}

/// A host's `upstream`: a URL, or `host[:port]` alone, which takes the scheme of the host's
/// ESP preset (`http` for Mailgun, `https` for the others).
pub(super) fn upstream_for(v: &Value, esp: &Esp) -> Result<UpstreamUrl, String> {
    let s = string(v)?;
    if s.contains("://") {
        return upstream_url(v);
    }
    let scheme = esp.upstream.split_once("://").map_or("https", |(s, _)| s);
    upstream_url(&Value::new(None, format!("{scheme}://{}", s.trim())))
}

/// A branded host name: a DNS name, stored lower case without a trailing dot.
pub(super) fn host_name(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    normalize_host_name(&s).ok_or_else(|| {
        format!("{s:?} is not a host name (letters, digits, '-' and '.', no port or scheme)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_may_be_fractional() {
        let ok = |s: &str| rate(&Value::new(None, s), 1000.0);
        assert!((ok("0.5").unwrap() - 0.5).abs() < f64::EPSILON);
        assert!((ok("20").unwrap() - 20.0).abs() < f64::EPSILON);
        assert!(ok("0").is_ok());
        assert!(ok("0.000001").is_err(), "less than one a day");
        assert!(ok("1001").is_err());
        assert!(ok("NaN").is_err());
        assert!(ok("fast").is_err());
    }

    #[test]
    fn upstream_urls() {
        let ok = |s: &str| upstream_url(&Value::new(None, s)).map(|u| u.to_string());
        assert_eq!(ok("https://sendgrid.net").unwrap(), "https://sendgrid.net");
        assert_eq!(ok("https://sendgrid.net/").unwrap(), "https://sendgrid.net");
        assert_eq!(
            ok("http://127.0.0.1:9000").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert!(ok("https://sendgrid.net/x").is_err());
        assert!(ok("sendgrid.net").is_err());
        assert!(ok("https://u:p@sendgrid.net").is_err());
    }
}
