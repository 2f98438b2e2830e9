//! The ESP presets: one table ([`ESPS`]) with what each ESP's docs say a proxy in front of its
//! tracking host must do. `[[hosts]] esp = "NAME"` (or a default `upstream.esp`) picks a row;
//! the row sets the upstream and the rules the forwarder, `check-config` and `trackproxy
//! doctor` apply. Every fact here comes from the ESP's page named in [`Esp::source`], and the
//! README's "ESPs" section repeats the table.
//!
//! This module knows no other part of the crate: it is plain data plus lookups.

/// How plain-HTTP requests to a branded host may be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectPolicy {
    /// `server.http_mode` decides (proxy or 308 to HTTPS).
    Allowed,
    /// The ESP asks proxies never to redirect `http://` to `https://`: plain HTTP is always
    /// forwarded, whatever `server.http_mode` says.
    Never,
}

/// Which schemes the ESP's tracking host accepts from a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schemes {
    /// `http://` or `https://`.
    Both,
    /// Plain HTTP only (Mailgun).
    HttpOnly,
    /// HTTPS only (Iterable).
    HttpsOnly,
}

/// Where requests for the app-link files (`apple-app-site-association`, `assetlinks.json`)
/// are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppLinks {
    /// By the proxy, from `[[hosts]] files` when set (the ESP does not serve them).
    Local,
    /// By the ESP, which serves them itself: they always pass through (`files` is refused).
    Upstream,
}

/// One ESP preset.
#[derive(Debug, PartialEq, Eq)]
pub struct Esp {
    /// The name used in `esp = "…"`.
    pub name: &'static str,
    /// Human name, for messages and the README.
    pub title: &'static str,
    /// The upstream origin; `{region}` stands for the host's `region` (SES).
    pub upstream: &'static str,
    /// Schemes the ESP's host accepts.
    pub schemes: Schemes,
    /// What plain HTTP may do.
    pub redirect: RedirectPolicy,
    /// The most bytes all request header fields together may have at the ESP (`name: value`
    /// plus CRLF each), or `None` when its docs give no limit.
    pub header_limit: Option<usize>,
    /// Request methods the ESP's recipe forwards; `None`: any (CONNECT is always refused).
    pub methods: Option<&'static [&'static str]>,
    /// The ESP's tracked path prefixes (`paths = "esp"`); empty when its docs name none.
    pub paths: &'static [&'static str],
    /// The path pattern its universal (app) links use, which an app-link file must claim.
    pub universal_links: Option<&'static str>,
    /// Where the app-link files are answered.
    pub app_links: AppLinks,
    /// The tracking host names of this ESP: a branded host whose CNAME chain still contains
    /// one of them has not been moved to the proxy.
    pub tracking_hosts: &'static [&'static str],
    /// The page the facts come from.
    pub source: &'static str,
}

impl Esp {
    /// The upstream URL for `region` (only SES uses it).
    #[must_use]
    pub fn upstream_url(&self, region: Option<&str>) -> String {
        match region {
            Some(r) => self.upstream.replace("{region}", r),
            None => self.upstream.to_owned(),
        }
    }

    /// Whether the upstream needs a region (`r.{region}.awstrack.me`).
    #[must_use]
    pub fn needs_region(&self) -> bool {
        self.upstream.contains("{region}")
    }

    /// Whether `method` may be forwarded.
    #[must_use]
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.is_none_or(|m| m.contains(&method))
    }

    /// Whether `host` (lower case, no trailing dot) is one of this ESP's tracking hosts, or a
    /// name under one (SES: `r.us-east-1.awstrack.me` under `awstrack.me`).
    #[must_use]
    pub fn is_tracking_host(&self, host: &str) -> bool {
        self.tracking_hosts
            .iter()
            .any(|t| host == *t || host.strip_suffix(t).is_some_and(|rest| rest.ends_with('.')))
    }
}

const SENDGRID_SOURCE: &str = "https://support.sendgrid.com/hc/en-us/articles/4447646844187-Enabling-SSL-for-Click-and-Open-Tracking-for-Your-Account \
     and https://support.sendgrid.com/hc/en-us/articles/1260802541709-SSL-Click-Tracking-Steps";
const SENDGRID_PATHS: &[&str] = &["/ls/", "/uni/", "/wf/", "/asm/"];
const SENDGRID_HOSTS: &[&str] = &["sendgrid.net"];
const SPARKPOST_SOURCE: &str = "https://support.sparkpost.com/docs/tech-resources/using-proxy-https-tracking-domain \
     and https://support.sparkpost.com/docs/tech-resources/enabling-https-engagement-tracking-on-sparkpost";
const SPARKPOST_PATHS: &[&str] = &["/f/", "/q/"];
const SPARKPOST_HOSTS: &[&str] = &["spgo.io"];
const MAILGUN_SOURCE: &str =
    "https://help.mailgun.com/hc/en-us/articles/360011566033-HTTPS-Tracking-Links";
const MAILGUN_HOSTS: &[&str] = &["mailgun.org"];
const ITERABLE_SOURCE: &str = "https://support.iterable.com/hc/en-us/articles/115000427446-Configuring-HTTPS-for-Link-Tracking-Domains";
/// The methods of Iterable's `CloudFront` recipe ("Allowed HTTP Methods").
const ITERABLE_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "PUT", "POST", "DELETE"];
const ITERABLE_HOSTS: &[&str] = &["links.iterable.com", "links.eu.iterable.com"];
const CUSTOMERIO_SOURCE: &str = "https://docs.customer.io/journeys/https-link-verification";
const CUSTOMERIO_HOSTS: &[&str] = &["track.customer.io", "track-eu.customer.io"];

/// Every preset. `sendgrid` is the default.
pub const ESPS: &[Esp] = &[
    Esp {
        name: "sendgrid",
        title: "Twilio SendGrid",
        upstream: "https://sendgrid.net",
        schemes: Schemes::Both,
        redirect: RedirectPolicy::Allowed,
        header_limit: None,
        methods: None,
        paths: SENDGRID_PATHS,
        universal_links: Some("/uni/*"),
        app_links: AppLinks::Local,
        tracking_hosts: SENDGRID_HOSTS,
        source: SENDGRID_SOURCE,
    },
    Esp {
        name: "sendgrid-eu",
        title: "Twilio SendGrid (EU)",
        upstream: "https://eu.sendgrid.net",
        schemes: Schemes::Both,
        redirect: RedirectPolicy::Allowed,
        header_limit: None,
        methods: None,
        paths: SENDGRID_PATHS,
        universal_links: Some("/uni/*"),
        app_links: AppLinks::Local,
        tracking_hosts: SENDGRID_HOSTS,
        source: SENDGRID_SOURCE,
    },
    Esp {
        name: "sparkpost",
        title: "SparkPost",
        upstream: "https://spgo.io",
        schemes: Schemes::Both,
        redirect: RedirectPolicy::Never,
        header_limit: None,
        methods: None,
        paths: SPARKPOST_PATHS,
        universal_links: Some("/f/*"),
        app_links: AppLinks::Local,
        tracking_hosts: SPARKPOST_HOSTS,
        source: SPARKPOST_SOURCE,
    },
    Esp {
        name: "sparkpost-eu",
        title: "SparkPost (EU)",
        upstream: "https://eu.spgo.io",
        schemes: Schemes::Both,
        redirect: RedirectPolicy::Never,
        header_limit: None,
        methods: None,
        paths: SPARKPOST_PATHS,
        universal_links: Some("/f/*"),
        app_links: AppLinks::Local,
        tracking_hosts: SPARKPOST_HOSTS,
        source: SPARKPOST_SOURCE,
    },
    Esp {
        name: "sparkpost-v2",
        title: "SparkPost (v2 endpoint)",
        upstream: "https://v2.spgo.io",
        schemes: Schemes::Both,
        redirect: RedirectPolicy::Never,
        header_limit: None,
        methods: None,
        paths: SPARKPOST_PATHS,
        universal_links: Some("/f/*"),
        app_links: AppLinks::Local,
        tracking_hosts: SPARKPOST_HOSTS,
        source: SPARKPOST_SOURCE,
    },
    Esp {
        name: "sparkpost-v2-eu",
        title: "SparkPost (EU, v2 endpoint)",
        upstream: "https://eu.v2.spgo.io",
        schemes: Schemes::Both,
        redirect: RedirectPolicy::Never,
        header_limit: None,
        methods: None,
        paths: SPARKPOST_PATHS,
        universal_links: Some("/f/*"),
        app_links: AppLinks::Local,
        tracking_hosts: SPARKPOST_HOSTS,
        source: SPARKPOST_SOURCE,
    },
    Esp {
        name: "mailgun",
        title: "Mailgun",
        upstream: "http://mailgun.org",
        schemes: Schemes::HttpOnly,
        redirect: RedirectPolicy::Allowed,
        header_limit: None,
        methods: None,
        paths: &[],
        universal_links: None,
        app_links: AppLinks::Local,
        tracking_hosts: MAILGUN_HOSTS,
        source: MAILGUN_SOURCE,
    },
    Esp {
        name: "mailgun-eu",
        title: "Mailgun (EU)",
        upstream: "http://eu.mailgun.org",
        schemes: Schemes::HttpOnly,
        redirect: RedirectPolicy::Allowed,
        header_limit: None,
        methods: None,
        paths: &[],
        universal_links: None,
        app_links: AppLinks::Local,
        tracking_hosts: MAILGUN_HOSTS,
        source: MAILGUN_SOURCE,
    },
    Esp {
        name: "ses",
        title: "Amazon SES",
        upstream: "https://r.{region}.awstrack.me",
        schemes: Schemes::Both,
        redirect: RedirectPolicy::Allowed,
        header_limit: Some(8192),
        methods: None,
        paths: &[],
        universal_links: None,
        app_links: AppLinks::Local,
        tracking_hosts: &["awstrack.me"],
        source: "https://docs.aws.amazon.com/ses/latest/dg/configure-custom-open-click-domains.html",
    },
    Esp {
        name: "iterable",
        title: "Iterable",
        upstream: "https://links.iterable.com",
        schemes: Schemes::HttpsOnly,
        redirect: RedirectPolicy::Allowed,
        header_limit: None,
        methods: Some(ITERABLE_METHODS),
        paths: &[],
        universal_links: None,
        app_links: AppLinks::Upstream,
        tracking_hosts: ITERABLE_HOSTS,
        source: ITERABLE_SOURCE,
    },
    Esp {
        name: "iterable-eu",
        title: "Iterable (EU)",
        upstream: "https://links.eu.iterable.com",
        schemes: Schemes::HttpsOnly,
        redirect: RedirectPolicy::Allowed,
        header_limit: None,
        methods: Some(ITERABLE_METHODS),
        paths: &[],
        universal_links: None,
        app_links: AppLinks::Upstream,
        tracking_hosts: ITERABLE_HOSTS,
        source: ITERABLE_SOURCE,
    },
    Esp {
        name: "customerio",
        title: "Customer.io",
        upstream: "https://track.customer.io",
        schemes: Schemes::Both,
        redirect: RedirectPolicy::Allowed,
        header_limit: None,
        methods: None,
        paths: &[],
        universal_links: None,
        app_links: AppLinks::Local,
        tracking_hosts: CUSTOMERIO_HOSTS,
        source: CUSTOMERIO_SOURCE,
    },
    Esp {
        name: "customerio-eu",
        title: "Customer.io (EU)",
        upstream: "https://track-eu.customer.io",
        schemes: Schemes::Both,
        redirect: RedirectPolicy::Allowed,
        header_limit: None,
        methods: None,
        paths: &[],
        universal_links: None,
        app_links: AppLinks::Local,
        tracking_hosts: CUSTOMERIO_HOSTS,
        source: CUSTOMERIO_SOURCE,
    },
    Esp {
        name: "mandrill",
        title: "Mandrill (Mailchimp Transactional)",
        upstream: "https://mandrillapp.com",
        schemes: Schemes::Both,
        redirect: RedirectPolicy::Allowed,
        header_limit: None,
        methods: None,
        paths: &["/track/"],
        universal_links: None,
        app_links: AppLinks::Local,
        tracking_hosts: &["mandrillapp.com"],
        source: "https://mandrill.zendesk.com/hc/en-us/articles/360038797994-How-to-Use-a-Custom-Tracking-Domain",
    },
];

/// The default preset (`sendgrid`).
#[must_use]
pub fn default_esp() -> &'static Esp {
    &ESPS[0]
}

/// The preset called `name` (case-insensitive).
#[must_use]
pub fn find(name: &str) -> Option<&'static Esp> {
    ESPS.iter()
        .find(|e| e.name.eq_ignore_ascii_case(name.trim()))
}

/// The preset whose tracking hosts include `host` (or a parent of it), if any.
#[must_use]
pub fn by_tracking_host(host: &str) -> Option<&'static Esp> {
    ESPS.iter().find(|e| e.is_tracking_host(host))
}

/// The names of every preset, for messages: `"sendgrid", "sendgrid-eu", …`.
#[must_use]
pub fn names() -> String {
    ESPS.iter()
        .map(|e| format!("{:?}", e.name))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_upstreams_are_origins() {
        for (i, e) in ESPS.iter().enumerate() {
            assert!(ESPS[..i].iter().all(|o| o.name != e.name), "{}", e.name);
            let url = e.upstream_url(Some("eu-west-1"));
            let uri: http::Uri = url.parse().unwrap();
            assert_eq!(uri.path(), "/", "{url}");
            let host = uri.host().unwrap();
            assert!(
                e.is_tracking_host(host),
                "{} not a tracking host of {}",
                host,
                e.name
            );
            let scheme = uri.scheme_str().unwrap();
            match e.schemes {
                Schemes::HttpOnly => assert_eq!(scheme, "http"),
                Schemes::HttpsOnly | Schemes::Both => assert_eq!(scheme, "https"),
            }
            assert!(e.source.starts_with("https://"));
        }
        assert_eq!(default_esp().name, "sendgrid");
    }

    #[test]
    fn lookups() {
        assert_eq!(find("SparkPost").unwrap().upstream, "https://spgo.io");
        assert!(find("sendgird").is_none());
        assert_eq!(
            find("ses").unwrap().upstream_url(Some("us-east-1")),
            "https://r.us-east-1.awstrack.me"
        );
        assert_eq!(
            by_tracking_host("r.eu-west-1.awstrack.me").unwrap().name,
            "ses"
        );
        assert_eq!(by_tracking_host("eu.v2.spgo.io").unwrap().name, "sparkpost");
        assert!(by_tracking_host("notsendgrid.net").is_none());
        assert!(find("iterable").unwrap().allows_method("POST"));
        assert!(!find("iterable").unwrap().allows_method("PATCH"));
        assert!(find("sendgrid").unwrap().allows_method("PATCH"));
    }
}
