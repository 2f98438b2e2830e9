//! DNS for the doctor: CNAME chains, addresses and CAA records, through `hickory-resolver`
//! (the servers of `/etc/resolv.conf`, or the one given with `--dns-server`).
//!
//! The chain is walked by hand, one `CNAME` query per hop, so a chain that ends in `NXDOMAIN`
//! is still shown hop by hop (the way `dig` would), instead of collapsing into "no records".
//! Every lookup runs under the doctor's time limit.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::ProtoError;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

/// Longest CNAME chain followed (resolvers stop at about 8-16 hops too).
const MAX_CHAIN: usize = 10;

/// Failure of one lookup (not an "it does not exist" answer, which is a result).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    /// The name is not a valid DNS name.
    #[error("{name:?} is not a valid DNS name")]
    BadName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        #[source]
        source: ProtoError,
    },
    /// No answer in time.
    #[error("{rtype} lookup of {name} got no answer within {limit:?}")]
    Timeout {
        /// Queried name.
        name: String,
        /// Queried type.
        rtype: RecordType,
        /// The limit.
        limit: Duration,
    },
    /// The server answered with an error (SERVFAIL, REFUSED, …) or could not be reached.
    #[error("{rtype} lookup of {name} failed")]
    Failed {
        /// Queried name.
        name: String,
        /// Queried type.
        rtype: RecordType,
        /// What the resolver reported.
        #[source]
        source: NetError,
    },
}

/// Setting up the resolver failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    /// `/etc/resolv.conf` could not be read or parsed.
    #[error("reading the system DNS configuration (/etc/resolv.conf)")]
    SystemConf(#[source] NetError),
    /// The resolver could not be built.
    #[error("building the DNS resolver")]
    Build(#[source] NetError),
}

/// The answer to one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Records {
    /// Records of the asked type (CNAMEs a recursive server added are left out).
    Found(Vec<RData>),
    /// `NXDOMAIN`: the name does not exist.
    NxDomain,
    /// The name exists but has no record of this type.
    NoData,
}

/// Where a name leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolution {
    /// The name looked up, then each CNAME target in order; lower case, no trailing dot.
    pub chain: Vec<String>,
    /// What the last name of the chain resolved to.
    pub end: End,
}

/// The end of a CNAME chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// A and AAAA addresses (at least one).
    Addrs(Vec<IpAddr>),
    /// The last name does not exist.
    NxDomain,
    /// The last name exists but has no A or AAAA record.
    NoAddress,
    /// The chain is longer than 10 hops (or loops).
    TooLong,
}

impl Resolution {
    /// The addresses at the end of the chain (empty unless it ended in addresses).
    #[must_use]
    pub(crate) fn addrs(&self) -> &[IpAddr] {
        match &self.end {
            End::Addrs(a) => a,
            _ => &[],
        }
    }

    /// `a → CNAME b → CNAME c → 192.0.2.1, 2001:db8::1` (or `→ NXDOMAIN`).
    #[must_use]
    pub(crate) fn describe(&self) -> String {
        let mut s = self.chain.first().cloned().unwrap_or_default();
        for target in self.chain.iter().skip(1) {
            s.push_str(" → CNAME ");
            s.push_str(target);
        }
        match &self.end {
            End::Addrs(addrs) => {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                s.push_str(" → ");
                s.push_str(&list.join(", "));
            }
            End::NxDomain => s.push_str(" → NXDOMAIN (does not exist)"),
            End::NoAddress => s.push_str(" → no A/AAAA record"),
            End::TooLong => s.push_str(" → … (CNAME chain too long or looping)"),
        }
        s
    }
}

/// A CAA record, decoded enough to judge it (RFC 8659).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caa {
    /// The issuer-critical flag.
    pub critical: bool,
    /// Property tag, lower case (`issue`, `issuewild`, `iodef`, …).
    pub tag: String,
    /// Property value as text.
    pub value: String,
}

impl std::fmt::Display for Caa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {:?}",
            if self.critical { 128 } else { 0 },
            self.tag,
            self.value
        )
    }
}

/// The resolver with the doctor's time limit.
pub(crate) struct Dns {
    resolver: TokioResolver,
    limit: Duration,
    /// Which servers are asked, for messages.
    pub servers: String,
}

impl Dns {
    /// A resolver asking `server` (or the system's servers) with `limit` per lookup. The hosts
    /// file is never consulted: the doctor checks what the world sees.
    ///
    /// # Errors
    /// When the system configuration cannot be read or the resolver cannot be built.
    pub(crate) fn new(server: Option<SocketAddr>, limit: Duration) -> Result<Dns, SetupError> {
        let (config, mut opts, servers) = if let Some(addr) = server {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            (
                ResolverConfig::from_name_servers(vec![ns]),
                ResolverOpts::default(),
                addr.to_string(),
            )
        } else {
            let (config, opts) = hickory_resolver::system_conf::read_system_conf()
                .map_err(SetupError::SystemConf)?;
            let list: Vec<String> = config
                .name_servers()
                .iter()
                .map(|n| n.ip.to_string())
                .collect();
            (config, opts, list.join(", "))
        };
        opts.timeout = limit;
        opts.attempts = 1;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.preserve_intermediates = true;
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(SetupError::Build)?;
        Ok(Dns {
            resolver,
            limit,
            servers,
        })
    }

    /// One query for `name` and `rtype`.
    ///
    /// # Errors
    /// Timeouts, server failures, invalid names.
    pub(crate) async fn records(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<Records, LookupError> {
        let fqdn = Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).map_err(|e| {
            LookupError::BadName {
                name: name.to_owned(),
                source: e,
            }
        })?;
        let answer = tokio::time::timeout(self.limit, self.resolver.lookup(fqdn, rtype))
            .await
            .map_err(|_| LookupError::Timeout {
                name: name.to_owned(),
                rtype,
                limit: self.limit,
            })?;
        match answer {
            Ok(lookup) => {
                let found: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                Ok(if found.is_empty() {
                    Records::NoData
                } else {
                    Records::Found(found)
                })
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(no))) => {
                Ok(if no.response_code == ResponseCode::NXDomain {
                    Records::NxDomain
                } else {
                    Records::NoData
                })
            }
            Err(source) => Err(LookupError::Failed {
                name: name.to_owned(),
                rtype,
                source,
            }),
        }
    }

    /// Follows `name`'s CNAME chain and looks up A and AAAA at its end.
    ///
    /// # Errors
    /// The first lookup that failed (a non-existent name is a result, not an error).
    pub(crate) async fn resolve(&self, name: &str) -> Result<Resolution, LookupError> {
        let mut current = normalize(name);
        let mut chain = vec![current.clone()];
        loop {
            if chain.len() > MAX_CHAIN {
                return Ok(Resolution {
                    chain,
                    end: End::TooLong,
                });
            }
            match self.records(&current, RecordType::CNAME).await? {
                Records::Found(rs) => {
                    let Some(target) = rs.iter().find_map(|r| match r {
                        RData::CNAME(c) => Some(normalize(&c.0.to_ascii())),
                        _ => None,
                    }) else {
                        break;
                    };
                    chain.push(target.clone());
                    current = target;
                }
                Records::NxDomain => {
                    return Ok(Resolution {
                        chain,
                        end: End::NxDomain,
                    });
                }
                Records::NoData => break,
            }
        }
        let (a, aaaa) = tokio::join!(
            self.records(&current, RecordType::A),
            self.records(&current, RecordType::AAAA)
        );
        let (a, aaaa) = (a?, aaaa?);
        let mut addrs = Vec::new();
        for r in [&a, &aaaa] {
            if let Records::Found(rs) = r {
                addrs.extend(rs.iter().filter_map(RData::ip_addr));
            }
        }
        let end = if !addrs.is_empty() {
            End::Addrs(addrs)
        } else if a == Records::NxDomain && aaaa == Records::NxDomain {
            End::NxDomain
        } else {
            End::NoAddress
        };
        Ok(Resolution { chain, end })
    }

    /// Addresses of `name`: itself if it is an IP literal, else the end of its chain.
    ///
    /// # Errors
    /// When the lookup fails.
    pub(crate) async fn addrs(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        if let Ok(ip) = name.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        Ok(self.resolve(name).await?.addrs().to_vec())
    }

    /// The CAA record set that governs `host` (RFC 8659 §3): the first non-empty set found
    /// at `host` and then at each parent, up to and including `apex`. Returns the name it
    /// was found at, or `None` when no name has CAA records.
    ///
    /// # Errors
    /// When a lookup fails (CAs refuse to issue then too).
    pub(crate) async fn caa(
        &self,
        host: &str,
        apex: &str,
    ) -> Result<Option<(String, Vec<Caa>)>, LookupError> {
        let mut name = normalize(host);
        loop {
            if let Records::Found(rs) = self.records(&name, RecordType::CAA).await? {
                let set: Vec<Caa> = rs
                    .iter()
                    .filter_map(|r| match r {
                        RData::CAA(c) => Some(Caa {
                            critical: c.issuer_critical,
                            tag: c.tag.to_ascii_lowercase(),
                            value: String::from_utf8_lossy(&c.value).into_owned(),
                        }),
                        _ => None,
                    })
                    .collect();
                if !set.is_empty() {
                    return Ok(Some((name, set)));
                }
            }
            if name == apex {
                return Ok(None);
            }
            match name.split_once('.') {
                Some((_, parent)) if !parent.is_empty() && parent.contains('.') => {
                    name = parent.to_owned();
                }
                _ => return Ok(None),
            }
        }
    }
}

/// Lower case, no trailing dot.
#[must_use]
pub(crate) fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Whether CAA set `set` lets `ca` (e.g. `letsencrypt.org`) issue a certificate for a
/// non-wildcard name (RFC 8659 §4): allowed when no `issue` property is present, otherwise
/// only if one names `ca`. An unknown property with the critical flag forbids everyone.
/// Returns the CA domains the set does allow (empty: nobody), or `None` when unrestricted.
#[must_use]
pub(crate) fn caa_allowed(set: &[Caa]) -> Option<Vec<String>> {
    const KNOWN: [&str; 5] = [
        "issue",
        "issuewild",
        "iodef",
        "contactemail",
        "contactphone",
    ];
    if set
        .iter()
        .any(|r| r.critical && !KNOWN.contains(&r.tag.as_str()))
    {
        return Some(Vec::new());
    }
    let issue: Vec<&Caa> = set.iter().filter(|r| r.tag == "issue").collect();
    if issue.is_empty() {
        return None;
    }
    Some(
        issue
            .iter()
            .filter_map(|r| {
                // issuer-domain-name [";" parameters]; an empty domain allows nobody.
                let domain = r.value.split(';').next().unwrap_or("").trim();
                (!domain.is_empty()).then(|| normalize(domain))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caa(critical: bool, tag: &str, value: &str) -> Caa {
        Caa {
            critical,
            tag: tag.into(),
            value: value.into(),
        }
    }

    #[test]
    fn caa_rules_follow_rfc_8659() {
        // no issue property: anyone may issue (issuewild only restricts wildcards)
        assert_eq!(caa_allowed(&[caa(false, "issuewild", ";")]), None);
        assert_eq!(caa_allowed(&[caa(false, "iodef", "mailto:x@y")]), None);
        // issue lists the allowed CAs, parameters after ';' are ignored
        assert_eq!(
            caa_allowed(&[
                caa(false, "issue", "letsencrypt.org; validationmethods=dns-01"),
                caa(false, "issue", "DigiCert.com"),
            ]),
            Some(vec!["letsencrypt.org".into(), "digicert.com".into()])
        );
        // issue ";" forbids everyone
        assert_eq!(caa_allowed(&[caa(false, "issue", ";")]), Some(vec![]));
        // an unknown critical property forbids everyone
        assert_eq!(
            caa_allowed(&[
                caa(false, "issue", "letsencrypt.org"),
                caa(true, "tbs", "x")
            ]),
            Some(vec![])
        );
        // a known critical property is fine
        assert_eq!(
            caa_allowed(&[caa(true, "issue", "letsencrypt.org")]),
            Some(vec!["letsencrypt.org".into()])
        );
    }

    #[test]
    fn chains_are_described_like_dig() {
        let r = Resolution {
            chain: vec!["url1.example.com".into(), "sendgrid.net".into()],
            end: End::Addrs(vec!["192.0.2.1".parse().unwrap()]),
        };
        assert_eq!(
            r.describe(),
            "url1.example.com → CNAME sendgrid.net → 192.0.2.1"
        );
        let r = Resolution {
            chain: vec!["url1.example.com".into()],
            end: End::NxDomain,
        };
        assert_eq!(r.describe(), "url1.example.com → NXDOMAIN (does not exist)");
    }
}
