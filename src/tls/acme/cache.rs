//! The ACME cache on disk (`tls.acme.cache_dir`, layout in [`super`]): paths, the account
//! key, each host's certificate and back-off record, written atomically; and rustls-acme's
//! cache interface for one order.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_acme::acme::{Account, AcmeError, Directory};
use rustls_acme::{AccountCache, CertCache};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tracing::{info, warn};

use super::host::{Backoff, Served, lock};
use crate::tls::cert::{CertSource, inspect};

/// The directory URL as a file name: `https://acme-v02.api.letsencrypt.org/directory` →
/// `acme-v02.api.letsencrypt.org_directory`.
#[must_use]
pub fn directory_dir_name(directory: &str) -> String {
    let rest = directory
        .strip_prefix("https://")
        .or_else(|| directory.strip_prefix("http://"))
        .unwrap_or(directory);
    let name: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = name.trim_matches(|c| c == '_' || c == '.');
    if name.is_empty() {
        "directory".to_owned()
    } else {
        name.to_owned()
    }
}

/// The cached certificate (key and chain) of `host`.
pub(super) fn cert_path(dir: &Path, host: &str) -> PathBuf {
    dir.join(format!("{host}.pem"))
}

pub(super) fn backoff_path(dir: &Path, host: &str) -> PathBuf {
    dir.join(format!("{host}.backoff.json"))
}

/// Creates `dir` (mode 0700) if needed and proves it writable with a synced probe file.
pub(super) fn ensure_writable(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)?;
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    let res = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(b"ok")?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    res
}

/// The cached certificate of `host` in `dir`, if there is one.
pub(super) fn read_cached(
    dir: &Path,
    host: &str,
    provider: &CryptoProvider,
) -> Result<Option<Served>, String> {
    let path = cert_path(dir, host);
    let pem = match std::fs::read(&path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    parse_pem(&pem, host, provider)
        .map(Some)
        .map_err(|m| format!("{}: {m}", path.display()))
}

/// Parses rustls-acme's cache format (private key PEM, then the chain) and checks that the
/// certificate is for `host`.
pub(super) fn parse_pem(
    pem: &[u8],
    host: &str,
    provider: &CryptoProvider,
) -> Result<Served, String> {
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("key and certificate do not fit: {e}"))?;
    let info = inspect(certified.cert.first(), CertSource::Acme)?;
    if !info.covers(host) {
        return Err(format!(
            "the certificate is for {:?}, not {host:?}",
            info.names
        ));
    }
    Ok(Served {
        key: Arc::new(certified),
        info,
    })
}

/// The persisted back-off record of `host`, if there is a readable one.
pub(super) fn read_backoff(dir: &Path, host: &str) -> Option<Backoff> {
    let path = backoff_path(dir, host);
    let text = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(b) => Some(b),
        Err(e) => {
            warn!(host, file = %path.display(), error = %e, "ignoring an unreadable ACME back-off record");
            None
        }
    }
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory, synced,
/// renamed over `path`, and the directory synced. Mode 0600 (keys live in these files).
pub(super) fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename itself must reach the disk too.
        std::fs::File::open(dir)?.sync_all()
    };
    let res = write();
    if res.is_err() {
        // Only our own temporary file; the file at `path` is never touched on an error.
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

pub(super) async fn write_atomic_async(path: PathBuf, contents: Vec<u8>) -> io::Result<()> {
    tokio::task::spawn_blocking(move || write_atomic(&path, &contents))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// Why the account could not be registered.
#[derive(Debug)]
pub(super) enum RegisterError {
    /// The account key could not be read or written.
    Key(io::Error),
    /// The CA refused or could not be reached.
    Acme(AcmeError),
}

/// The account key of one directory, shared by every host: created once and never
/// overwritten, and registered with the CA once per process before any order.
///
/// Each order (rustls-acme's `AcmeState`) registers the key again, which a CA answers with the
/// existing account. Hosts that start together would otherwise all register a new key at the
/// same moment, and a CA may create the account for one of them and refuse the others (Pebble
/// answers `serverInternal`): those hosts would fail and wait out a back-off for nothing.
pub(super) struct AccountStore {
    path: PathBuf,
    /// Whether this process has registered the key; held while the key is read, created or
    /// registered.
    registered: tokio::sync::Mutex<bool>,
}

impl AccountStore {
    pub(super) fn new(path: PathBuf) -> Self {
        AccountStore {
            path,
            registered: tokio::sync::Mutex::new(false),
        }
    }

    pub(super) async fn load_or_create(&self) -> io::Result<Vec<u8>> {
        let _guard = self.registered.lock().await;
        self.read_or_create().await
    }

    /// Registers the account (RFC 8555 §7.3) with the CA at `directory` unless this process
    /// already has. Hosts arriving meanwhile wait, and then find the account.
    pub(super) async fn register(
        &self,
        client: &Arc<ClientConfig>,
        directory: &str,
        contact: &[String],
    ) -> Result<(), RegisterError> {
        let mut registered = self.registered.lock().await;
        if *registered {
            return Ok(());
        }
        let key = self.read_or_create().await.map_err(RegisterError::Key)?;
        let directory = Directory::discover(client, directory)
            .await
            .map_err(RegisterError::Acme)?;
        Account::create_with_keypair(client, directory, contact, &key)
            .await
            .map_err(RegisterError::Acme)?;
        *registered = true;
        Ok(())
    }

    async fn read_or_create(&self) -> io::Result<Vec<u8>> {
        let path = self.path.clone();
        match tokio::fs::read(&path).await {
            Ok(pem) => {
                let key = PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: not a PKCS#8 PEM key: {e}", path.display()),
                    )
                })?;
                Ok(key.secret_pkcs8_der().to_vec())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let der = rustls_acme::acme::Account::generate_key_pair();
                let pem = rcgen::KeyPair::try_from(der.as_slice())
                    .map_err(|e| io::Error::other(format!("encoding the account key: {e}")))?
                    .serialize_pem();
                write_atomic_async(path.clone(), pem.into_bytes()).await?;
                info!(file = %path.display(), "ACME account key created");
                Ok(der)
            }
            Err(e) => Err(e),
        }
    }
}

/// rustls-acme's cache for one order of one host. `load_cert` returns nothing: the host task
/// starts an order only when one is due, and serves the cached certificate itself. The new
/// certificate is kept for the task and written atomically.
pub(super) struct HostCache {
    pub(super) path: PathBuf,
    pub(super) account: Arc<AccountStore>,
    pub(super) issued: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait]
impl CertCache for HostCache {
    type EC = io::Error;

    async fn load_cert(&self, _: &[String], _: &str) -> Result<Option<Vec<u8>>, io::Error> {
        Ok(None)
    }

    async fn store_cert(&self, _: &[String], _: &str, cert: &[u8]) -> Result<(), io::Error> {
        *lock(&self.issued) = Some(cert.to_vec());
        write_atomic_async(self.path.clone(), cert.to_vec()).await
    }
}

#[async_trait]
impl AccountCache for HostCache {
    type EA = io::Error;

    async fn load_account(&self, _: &[String], _: &str) -> Result<Option<Vec<u8>>, io::Error> {
        self.account.load_or_create().await.map(Some)
    }

    async fn store_account(&self, _: &[String], _: &str, _: &[u8]) -> Result<(), io::Error> {
        // Never reached (load_account always has a key); never overwrite an account key.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_are_file_names() {
        assert_eq!(
            directory_dir_name("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            directory_dir_name("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000_dir"
        );
        assert_eq!(directory_dir_name("https://../../x"), "x");
        assert_eq!(directory_dir_name("https://.."), "directory");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pem");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.pem"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A failed write (directory gone) leaves nothing behind and reports the error.
        let gone = dir.path().join("missing").join("y.pem");
        assert!(write_atomic(&gone, b"x").is_err());
    }
}
