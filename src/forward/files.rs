//! App-link files served from the branded host itself: iOS universal links fetch
//! `https://<host>/.well-known/apple-app-site-association` (and `/apple-app-site-association`),
//! Android App Links `https://<host>/.well-known/assetlinks.json`. Both must answer 200 with
//! `Content-Type: application/json` and no redirect (Android's verification fails on an
//! http→https redirect), and iOS reads at most 128 KB of the association file.
//!
//! `[[hosts]] files = "DIR"` names a directory holding `apple-app-site-association` and/or
//! `assetlinks.json`. They are read and checked when the configuration is built or reloaded
//! (a file that is not valid JSON, an association file over 128 KB, or an assetlinks.json that
//! is not a list is a configuration problem naming `hosts[N].files` and the file), kept in
//! memory, and answered before any redirect, on HTTPS and plain HTTP alike; they never reach
//! the ESP. A file missing from the directory leaves its paths to the ESP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};

use super::body::ForwardBody;
use super::local::local_response;
use crate::config::{Config, Problem};

/// The association file's name in the directory, and where it is served.
pub(crate) const AASA_FILE: &str = "apple-app-site-association";
/// Paths of the association file (Apple checks `/.well-known/` first, then the root).
pub(crate) const AASA_PATHS: [&str; 2] = [
    "/.well-known/apple-app-site-association",
    "/apple-app-site-association",
];
/// The Digital Asset Links file's name in the directory.
pub(crate) const ASSETLINKS_FILE: &str = "assetlinks.json";
/// Where the Digital Asset Links file is served.
pub(crate) const ASSETLINKS_PATH: &str = "/.well-known/assetlinks.json";
/// The most bytes iOS reads of an association file.
pub(crate) const AASA_MAX_BYTES: usize = 128 * 1024;
/// A bound for assetlinks.json so a wrong file cannot fill memory (no platform limit is
/// documented; real files are a few hundred bytes).
const ASSETLINKS_MAX_BYTES: usize = 1024 * 1024;

/// The app-link files of every host that has `files`, read and checked.
#[derive(Debug, Default, Clone)]
pub(crate) struct AppFiles {
    by_host: HashMap<String, HostFiles>,
}

#[derive(Debug, Default, Clone)]
struct HostFiles {
    aasa: Option<Bytes>,
    assetlinks: Option<Bytes>,
}

/// Why an app-link file is refused: what is wrong, in words for `check-config`.
pub(crate) fn check_aasa(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > AASA_MAX_BYTES {
        return Err(format!(
            "is larger than {AASA_MAX_BYTES} bytes (128 KB), the most iOS reads"
        ));
    }
    serde_json::from_slice::<serde_json::Value>(bytes)
        .map(|_| ())
        .map_err(|e| format!("is not valid JSON ({e})"))
}

/// Like [`check_aasa`] for assetlinks.json: valid JSON and a list of statements.
pub(crate) fn check_assetlinks(bytes: &[u8]) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("is not valid JSON ({e})"))?;
    if v.is_array() {
        Ok(())
    } else {
        Err("is not a JSON list: Android expects an array of statements ([{\"relation\": …, \"target\": …}])".into())
    }
}

impl AppFiles {
    /// Reads every host's `files` directory.
    ///
    /// # Errors
    /// One problem per unreadable or invalid file, each naming `hosts[N].files` and the file.
    pub(crate) fn load(cfg: &Config) -> Result<AppFiles, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut by_host = HashMap::new();
        for (i, h) in cfg.hosts.iter().enumerate() {
            let Some(dir) = &h.files else { continue };
            let mut problem = |file: &Path, message: String| {
                problems.push(Problem {
                    key: format!("hosts[{i}].files"),
                    origin: cfg.origin.clone(),
                    message: format!("{} {message}", file.display()),
                });
            };
            let mut read = |name: &str, max: usize, check: fn(&[u8]) -> Result<(), String>| {
                let file = dir.join(name);
                match read_limited(&file, max) {
                    Ok(None) => None,
                    Ok(Some(bytes)) => match check(&bytes) {
                        Ok(()) => Some(Bytes::from(bytes)),
                        Err(m) => {
                            problem(&file, m);
                            None
                        }
                    },
                    Err(e) => {
                        problem(&file, format!("cannot be read: {e}"));
                        None
                    }
                }
            };
            // One byte over the limit is enough to say it is too big.
            let aasa = read(AASA_FILE, AASA_MAX_BYTES + 1, check_aasa);
            let assetlinks = read(ASSETLINKS_FILE, ASSETLINKS_MAX_BYTES, check_assetlinks);
            let none = aasa.is_none() && assetlinks.is_none();
            if none && !dir.join(AASA_FILE).exists() && !dir.join(ASSETLINKS_FILE).exists() {
                problems.push(Problem {
                    key: format!("hosts[{i}].files"),
                    origin: cfg.origin.clone(),
                    message: format!(
                        "{} holds neither {AASA_FILE} nor {ASSETLINKS_FILE}",
                        dir.display()
                    ),
                });
            }
            by_host.insert(h.name.clone(), HostFiles { aasa, assetlinks });
        }
        if problems.is_empty() {
            Ok(AppFiles { by_host })
        } else {
            Err(problems)
        }
    }

    /// Every file path `cfg` may serve, present or not (to watch for changes on disk).
    pub(crate) fn paths(cfg: &Config) -> Vec<PathBuf> {
        cfg.hosts
            .iter()
            .filter_map(|h| h.files.as_ref())
            .flat_map(|d| [d.join(AASA_FILE), d.join(ASSETLINKS_FILE)])
            .collect()
    }

    /// The local answer for `path` on `host`, if it is an app-link file this host serves.
    pub(crate) fn answer(
        &self,
        host: &str,
        method: &Method,
        path: &str,
    ) -> Option<Response<ForwardBody>> {
        let files = self.by_host.get(host)?;
        let body = if AASA_PATHS.contains(&path) {
            files.aasa.as_ref()?
        } else if path == ASSETLINKS_PATH {
            files.assetlinks.as_ref()?
        } else {
            return None;
        };
        if method != Method::GET && method != Method::HEAD {
            let mut res =
                local_response(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Some(res);
        }
        let mut res = local_response(StatusCode::OK, body.clone());
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Some(res)
    }
}

/// Reads `file` if it exists, at most `max` bytes.
fn read_limited(file: &Path, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    f.take(u64::try_from(max).unwrap_or(u64::MAX))
        .read_to_end(&mut buf)?;
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks() {
        assert!(check_aasa(br#"{"applinks": {"details": []}}"#).is_ok());
        assert!(
            check_aasa(b"{not json")
                .unwrap_err()
                .contains("not valid JSON")
        );
        let big = format!("{{\"x\": \"{}\"}}", "a".repeat(AASA_MAX_BYTES));
        assert!(check_aasa(big.as_bytes()).unwrap_err().contains("128 KB"));
        assert!(check_assetlinks(b"[]").is_ok());
        assert!(
            check_assetlinks(b"{}")
                .unwrap_err()
                .contains("not a JSON list")
        );
        assert!(
            check_assetlinks(b"[")
                .unwrap_err()
                .contains("not valid JSON")
        );
    }
}
