//! The commented configuration `trackproxy init` writes for a new user: one ESP preset, the
//! branded hosts, certificates over ACME from Let's Encrypt's *staging* directory first (as the
//! README advises: its rate limits forgive mistakes), public listeners, the admin listener on
//! loopback.

use std::fmt::Write as _;
use std::path::Path;

use super::esp::{AppLinks, Esp, RedirectPolicy, Schemes};

/// What `trackproxy init` was asked for.
#[derive(Debug, Clone)]
pub struct Starter<'a> {
    /// The ESP preset.
    pub esp: &'static Esp,
    /// The AWS region (SES only).
    pub region: Option<&'a str>,
    /// Branded hosts, already valid names.
    pub hosts: &'a [String],
    /// ACME account contact, an e-mail address (without `mailto:`).
    pub contact: Option<&'a str>,
    /// Where ACME keeps the account key and certificates.
    pub cache_dir: &'a Path,
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Starter<'_> {
    /// The configuration text.
    #[must_use]
    pub fn toml(&self) -> String {
        let mut s = String::new();
        self.server(&mut s);
        self.upstream(&mut s);
        self.hosts(&mut s);
        self.rest(&mut s);
        s
    }

    /// Reads `toml` (this starter's text) back like `check-config` does, without environment
    /// overrides; `label` names it in messages.
    ///
    /// # Errors
    /// Every problem found (a bug in the starter if there is one).
    pub fn check(toml: &str, label: &str) -> Result<super::Config, super::Errors> {
        super::load_with_env(
            &super::Source::Text { label, toml },
            Some(config::Map::new()),
        )
    }

    fn server(&self, s: &mut String) {
        let e = self.esp;
        let _ = writeln!(
            s,
            "# trackproxy for {} — written by `trackproxy init`.\n\
             # Check it:   trackproxy check-config --config THIS_FILE\n\
             # Then, once the hosts' DNS points here:   trackproxy doctor --config THIS_FILE\n\
             # Every key is described in the README (\"Configuration\"); the {} preset's facts\n\
             # come from {}\n",
            e.title, e.name, e.source
        );
        s.push_str(
            "[server]\n\
             https_listen = \"0.0.0.0:443\"\n\
             http_listen = \"0.0.0.0:80\"\n",
        );
        match e.redirect {
            RedirectPolicy::Allowed => s.push_str(
                "# \"proxy\": http:// links keep working (links already sent use them);\n\
                 # \"redirect\": answer 308 to https://.\n\
                 http_mode = \"proxy\"\n\n",
            ),
            RedirectPolicy::Never => {
                let _ = writeln!(
                    s,
                    "# {} asks proxies not to redirect http:// to https://: its hosts are always\n\
                     # proxied on plain HTTP, whatever http_mode says.\n\
                     http_mode = \"proxy\"\n",
                    e.title
                );
            }
        }
    }

    fn upstream(&self, s: &mut String) {
        let e = self.esp;
        let url = e.upstream_url(self.region);
        let _ = writeln!(
            s,
            "[upstream]\n\
             # The ESP preset: every host forwards to {url} with {}'s rules.\n\
             esp = {}",
            e.title,
            quoted(e.name)
        );
        if let Some(r) = self.region {
            s.push_str("# The AWS region of your SES configuration set's tracking host.\n");
            let _ = writeln!(s, "region = {}", quoted(r));
        }
        match e.schemes {
            Schemes::HttpOnly => {
                let _ = writeln!(s, "# {} accepts plain HTTP only from proxies.", e.title);
            }
            Schemes::HttpsOnly => {
                let _ = writeln!(s, "# {} accepts HTTPS only from proxies.", e.title);
            }
            Schemes::Both => {}
        }
        if let Some(limit) = e.header_limit {
            let _ = writeln!(
                s,
                "# {} refuses requests with more than {limit} bytes of headers: cookies are\n\
                 # dropped to stay under it, and a request still too large is answered 431.",
                e.title
            );
        }
        s.push('\n');
    }

    fn hosts(&self, s: &mut String) {
        let e = self.esp;
        for host in self.hosts {
            let _ = writeln!(s, "[[hosts]]\nname = {}", quoted(host));
            s.push_str(
                "# The ESP's ownership record of this branding, which must keep pointing at\n\
                 # the ESP (checked by `trackproxy doctor`):\n\
                 # owner_record = \"12345.example.com\"\n\
                 # Which cookies reach the ESP: \"all\" (default), \"none\" or a list of names.\n\
                 # forward_cookies = \"all\"\n",
            );
            if !e.paths.is_empty() {
                let _ = writeln!(
                    s,
                    "# Forward only {}'s tracked paths ({}); others get 404:\n# paths = \"esp\"",
                    e.title,
                    e.paths.join(", ")
                );
            }
            if e.app_links == AppLinks::Local {
                let _ = writeln!(
                    s,
                    "# A directory with apple-app-site-association and/or assetlinks.json, served\n\
                     # for universal links / App Links:\n\
                     # files = \"/etc/trackproxy/app-links/{host}\""
                );
            } else {
                let _ = writeln!(
                    s,
                    "# {} serves apple-app-site-association and assetlinks.json itself: they\n\
                     # pass through.",
                    e.title
                );
            }
            s.push('\n');
        }
    }

    fn rest(&self, s: &mut String) {
        s.push_str(
            "[tls.acme]\n\
             # Let's Encrypt's staging directory first: its certificates are not trusted by\n\
             # browsers, but mistakes do not hit production's rate limits. Once\n\
             # `trackproxy doctor` shows the hosts served, switch to production:\n\
             # directory = \"https://acme-v02.api.letsencrypt.org/directory\"\n\
             directory = \"https://acme-staging-v02.api.letsencrypt.org/directory\"\n",
        );
        match self.contact {
            Some(c) => {
                let _ = writeln!(s, "contact = [{}]", quoted(&format!("mailto:{c}")));
            }
            None => s.push_str("# contact = [\"mailto:ops@example.com\"]\n"),
        }
        let _ = writeln!(
            s,
            "# Keeps the account key and the certificates: writable and persistent.\n\
             cache_dir = {}\n",
            quoted(&self.cache_dir.display().to_string())
        );
        s.push_str(
            "[admin]\n\
             # /healthz, /readyz, /metrics: keep it off the public network.\n\
             listen = \"127.0.0.1:9090\"\n\n\
             [log]\n\
             format = \"json\"\n\
             level = \"info\"\n",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Source, esp, load_with_env};
    use super::*;

    #[test]
    fn every_preset_gives_a_valid_configuration() {
        let hosts = ["url1.example.com".to_owned(), "url2.example.com".to_owned()];
        for e in esp::ESPS {
            let region = e.needs_region().then_some("eu-west-1");
            let toml = Starter {
                esp: e,
                region,
                hosts: &hosts,
                contact: Some("ops@example.com"),
                cache_dir: Path::new("/var/lib/trackproxy/acme"),
            }
            .toml();
            let label = "init.toml";
            let cfg = load_with_env(
                &Source::Text { label, toml: &toml },
                Some(config::Map::new()),
            )
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
            assert_eq!(cfg.hosts.len(), 2);
            assert!(cfg.hosts.iter().all(|h| h.esp == e));
            assert_eq!(cfg.hosts[0].upstream.to_string(), e.upstream_url(region));
            let acme = cfg.tls.acme.unwrap();
            assert!(acme.directory.contains("staging"));
            assert_eq!(acme.contact, ["mailto:ops@example.com"]);
        }
    }
}
