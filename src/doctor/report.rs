//! The doctor's findings: one [`Check`] per step and host, printed as a checklist
//! (`✓` / `✗` / `!` / `-`) or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Nothing to fix.
    Ok,
    /// Works now, but something needs attention.
    Warn,
    /// Broken: clicks or certificates fail because of it.
    Fail,
    /// Not checked (missing input, or an earlier step already failed).
    Skip,
}

impl Status {
    /// The checklist mark.
    #[must_use]
    pub(crate) fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
            Status::Skip => "-",
        }
    }
}

/// Which step a check is; the JSON `check` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Step {
    /// The host's CNAME chain and addresses.
    Dns,
    /// The ESP's ownership record still points at the ESP.
    OwnerRecord,
    /// TLS handshake and certificate.
    Https,
    /// A tracked request through the proxy.
    ClickPath,
    /// The app-link files (iOS universal links, Android App Links) through the proxy.
    AppLinks,
    /// The sender's website's `Strict-Transport-Security`.
    Hsts,
    /// CAA records governing the host.
    Caa,
    /// TLS to the ESP from this machine.
    Upstream,
}

impl Step {
    /// Short label for the checklist.
    #[must_use]
    pub(crate) fn label(self) -> &'static str {
        match self {
            Step::Dns => "DNS",
            Step::OwnerRecord => "owner record",
            Step::Https => "HTTPS",
            Step::ClickPath => "click path",
            Step::AppLinks => "app links",
            Step::Hsts => "HSTS",
            Step::Caa => "CAA",
            Step::Upstream => "upstream",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
#[allow(clippy::struct_field_names)] // `check` is the field's name in `doctor --json`
pub(crate) struct Check {
    /// Which step.
    pub check: Step,
    /// Outcome.
    pub status: Status,
    /// One line: what was found.
    pub summary: String,
    /// What was seen (records, certificate facts, headers), one item per line.
    pub evidence: Vec<String>,
    /// What to do, in one sentence; `None` when there is nothing to do.
    pub fix: Option<String>,
}

impl Check {
    /// A check with no evidence and no fix yet.
    pub(crate) fn new(check: Step, status: Status, summary: impl Into<String>) -> Check {
        Check {
            check,
            status,
            summary: summary.into(),
            evidence: Vec::new(),
            fix: None,
        }
    }

    /// Adds a line of evidence.
    #[must_use]
    pub(crate) fn evidence(mut self, line: impl Into<String>) -> Check {
        self.evidence.push(line.into());
        self
    }

    /// Sets the fix.
    #[must_use]
    pub(crate) fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// Every check of one branded host, in order.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostReport {
    /// The branded host.
    pub host: String,
    /// Findings, in the order the steps ran.
    pub checks: Vec<Check>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// True when no check failed (warnings allowed).
    pub ok: bool,
    /// Number of failed checks.
    pub failed: usize,
    /// Number of warnings.
    pub warnings: usize,
    /// One entry per host checked.
    pub hosts: Vec<HostReport>,
}

impl Report {
    /// Totals the findings of `hosts`.
    #[must_use]
    pub(crate) fn new(hosts: Vec<HostReport>) -> Report {
        let count = |s: Status| {
            hosts
                .iter()
                .flat_map(|h| &h.checks)
                .filter(|c| c.status == s)
                .count()
        };
        let failed = count(Status::Fail);
        let warnings = count(Status::Warn);
        Report {
            ok: failed == 0,
            failed,
            warnings,
            hosts,
        }
    }

    /// The human-readable checklist.
    #[must_use]
    pub(crate) fn to_text(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            let _ = writeln!(out, "{}", h.host);
            for c in &h.checks {
                let _ = writeln!(
                    out,
                    "  {} {:<13}{}",
                    c.status.mark(),
                    c.check.label(),
                    c.summary
                );
                for e in &c.evidence {
                    let _ = writeln!(out, "      {e}");
                }
                if let Some(fix) = &c.fix {
                    let _ = writeln!(out, "      fix: {fix}");
                }
            }
            out.push('\n');
        }
        let plural = |n: usize, word: &str| {
            if n == 1 {
                format!("{n} {word}")
            } else {
                format!("{n} {word}s")
            }
        };
        let _ = writeln!(
            out,
            "{}, {}.",
            plural(self.failed, "failed check"),
            plural(self.warnings, "warning")
        );
        out
    }

    /// The JSON report (pretty-printed).
    #[must_use]
    pub(crate) fn to_json(&self) -> String {
        // Serializing plain structs of strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_agree() {
        let r = Report::new(vec![HostReport {
            host: "url1.example.com".into(),
            checks: vec![
                Check::new(Step::Dns, Status::Ok, "CNAME to the proxy")
                    .evidence("url1.example.com CNAME proxy.example.net"),
                Check::new(Step::Https, Status::Fail, "certificate expired")
                    .fix("Renew the certificate."),
                Check::new(Step::Hsts, Status::Warn, "includeSubDomains"),
            ],
        }]);
        assert!(!r.ok);
        assert_eq!((r.failed, r.warnings), (1, 1));
        let text = r.to_text();
        assert!(
            text.contains("  ✓ DNS          CNAME to the proxy\n"),
            "{text}"
        );
        assert!(
            text.contains("  ✗ HTTPS        certificate expired\n"),
            "{text}"
        );
        assert!(
            text.contains("      fix: Renew the certificate.\n"),
            "{text}"
        );
        assert!(text.ends_with("1 failed check, 1 warning.\n"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["hosts"][0]["checks"][1]["check"], "https");
        assert_eq!(v["hosts"][0]["checks"][1]["status"], "fail");
        assert_eq!(v["hosts"][0]["checks"][0]["fix"], serde_json::Value::Null);
    }
}
