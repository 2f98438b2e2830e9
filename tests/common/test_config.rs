//! [`TestConfig`]: the proxy's TOML for a test, put together key by key and rendered once,
//! instead of edited as text.

use std::path::{Path, PathBuf};

/// A TOML value, rendered.
#[derive(Clone, Debug)]
pub struct Value(String);

/// A TOML basic string.
fn quoted(s: &str) -> Value {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    Value(out)
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        quoted(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        quoted(&s)
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Self {
        quoted(s)
    }
}

impl From<&Path> for Value {
    fn from(p: &Path) -> Self {
        quoted(&p.display().to_string())
    }
}

impl From<&PathBuf> for Value {
    fn from(p: &PathBuf) -> Self {
        p.as_path().into()
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value(b.to_string())
    }
}

impl From<i32> for Value {
    fn from(n: i32) -> Self {
        Value(n.to_string())
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Self {
        Value(n.to_string())
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Self {
        Value(n.to_string())
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value(n.to_string())
    }
}

impl<const N: usize> From<[&str; N]> for Value {
    fn from(items: [&str; N]) -> Self {
        items.as_slice().into()
    }
}

impl From<&[&str]> for Value {
    fn from(items: &[&str]) -> Self {
        let items: Vec<String> = items.iter().map(|s| quoted(s).0).collect();
        Value(format!("[{}]", items.join(", ")))
    }
}

impl From<&[String]> for Value {
    fn from(items: &[String]) -> Self {
        let items: Vec<String> = items.iter().map(|s| quoted(s).0).collect();
        Value(format!("[{}]", items.join(", ")))
    }
}

type Keys = Vec<(String, Value)>;

/// A proxy configuration for a test: `[[hosts]]`, `[[tls.certificates]]`, and any other key by
/// its dotted path (`server.drain_delay`, `tls.acme.backoff_initial`). Setting a key again
/// replaces its value. [`TestConfig::toml`] renders it.
///
/// ```ignore
/// let toml = TestConfig::new(&upstream.url)
///     .upstream_ca(&ca.ca_file)
///     .host("url1234.example.test")
///     .certificate(ca.write_leaf("proxy", &["url1234.example.test"], KeyAlg::EcdsaP256))
///     .set("server.drain_delay", "3s")
///     .toml();
/// ```
#[derive(Clone, Debug)]
pub struct TestConfig {
    /// Tables in the order they were first set, each with its keys in order.
    tables: Vec<(String, Keys)>,
    hosts: Vec<Keys>,
    certificates: Vec<(PathBuf, PathBuf)>,
}

impl TestConfig {
    /// Forwarding to `upstream_url` with a 5 s response timeout, logging at `debug`; no hosts
    /// and no certificates yet.
    pub fn new(upstream_url: &str) -> Self {
        TestConfig {
            tables: Vec::new(),
            hosts: Vec::new(),
            certificates: Vec::new(),
        }
        .set("upstream.url", upstream_url)
        .set("upstream.response_timeout", "5s")
        .set("log.level", "debug")
    }

    /// Trusts `ca_file` for the upstream's certificate (`upstream.ca_file`).
    pub fn upstream_ca(self, ca_file: &Path) -> Self {
        self.set("upstream.ca_file", ca_file)
    }

    /// A `[[hosts]]` entry forwarding to the default upstream.
    pub fn host(mut self, name: &str) -> Self {
        self.hosts.push(vec![("name".to_owned(), name.into())]);
        self
    }

    /// [`TestConfig::host`] for each of `names`.
    pub fn hosts(self, names: &[&str]) -> Self {
        names.iter().fold(self, |c, n| c.host(n))
    }

    /// Sets `key` in the `[[hosts]]` entry for `name` (e.g. its own `upstream`).
    pub fn host_set(mut self, name: &str, key: &str, value: impl Into<Value>) -> Self {
        let wanted = Value::from(name).0;
        let host = self
            .hosts
            .iter_mut()
            .find(|keys| keys.iter().any(|(k, v)| k == "name" && v.0 == wanted))
            .unwrap_or_else(|| panic!("no host {name:?} in this configuration"));
        let value = value.into();
        match host.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => host.push((key.to_owned(), value)),
        }
        self
    }

    /// A `[[tls.certificates]]` entry: (certificate chain file, key file).
    pub fn certificate(mut self, (cert, key): (PathBuf, PathBuf)) -> Self {
        self.certificates.push((cert, key));
        self
    }

    /// Sets `key`, a dotted path whose last part is the key and the rest its table
    /// (`"limits.max_connections"`).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let (table, name) = key
            .rsplit_once('.')
            .unwrap_or_else(|| panic!("{key:?}: no table; give it as table.key"));
        let value = value.into();
        let i = match self.tables.iter().position(|(t, _)| t == table) {
            Some(i) => i,
            None => {
                self.tables.push((table.to_owned(), Vec::new()));
                self.tables.len() - 1
            }
        };
        let keys = &mut self.tables[i].1;
        match keys.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value,
            None => keys.push((name.to_owned(), value)),
        }
        self
    }

    /// Removes `key` (a dotted path, as in [`TestConfig::set`]) if it is set.
    pub fn unset(mut self, key: &str) -> Self {
        if let Some((table, name)) = key.rsplit_once('.') {
            for (t, keys) in &mut self.tables {
                if t == table {
                    keys.retain(|(k, _)| k != name);
                }
            }
        }
        self
    }

    /// The configuration as TOML.
    pub fn toml(&self) -> String {
        let mut s = String::new();
        let mut table = |header: &str, keys: &Keys| {
            s.push_str(header);
            s.push('\n');
            for (k, v) in keys {
                s.push_str(&format!("{k} = {}\n", v.0));
            }
            s.push('\n');
        };
        for (name, keys) in &self.tables {
            table(&format!("[{name}]"), keys);
        }
        for keys in &self.hosts {
            table("[[hosts]]", keys);
        }
        for (cert, key) in &self.certificates {
            let keys = vec![
                ("cert".to_owned(), cert.into()),
                ("key".to_owned(), key.into()),
            ];
            table("[[tls.certificates]]", &keys);
        }
        s
    }
}
