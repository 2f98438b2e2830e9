//! Notices when certificate files change on disk, so rotated certificates (cert-manager
//! updating a Kubernetes Secret, a cron job renewing from an internal CA) are served without a
//! restart. The app-link files of `[[hosts]] files` are watched the same way.
//!
//! It polls file metadata instead of using inotify: Secret volumes are updated by swapping a
//! `..data` symlink, which file-level inotify watches miss, and a stat every few seconds costs
//! nothing. `metadata` follows symlinks, so a swapped target shows up as another inode.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::config::Config;

/// What identifies one version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: (u64, u64),
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        #[cfg(unix)]
        inode: {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        },
    })
}

/// Watches the `[[tls.certificates]]` files of one configuration.
#[derive(Debug)]
pub(crate) struct CertWatch {
    interval: Duration,
    files: Vec<(PathBuf, Option<Stamp>)>,
}

impl CertWatch {
    /// Watches the files `cfg` names, as they are now.
    pub(crate) fn new(cfg: &Config) -> Self {
        let files = cfg
            .tls
            .certificates
            .iter()
            .flat_map(|c| [c.cert.clone(), c.key.clone()])
            .map(|p| {
                let s = stamp(&p);
                (p, s)
            })
            .collect();
        CertWatch {
            interval: cfg.tls.watch_interval,
            files,
        }
    }

    /// Watches `files` (present or not: a file that appears counts as a change) every
    /// `interval`; the app-link files of `[[hosts]] files` use it.
    pub(crate) fn of_files(interval: Duration, files: Vec<PathBuf>) -> Self {
        CertWatch {
            interval,
            files: files
                .into_iter()
                .map(|p| {
                    let s = stamp(&p);
                    (p, s)
                })
                .collect(),
        }
    }

    /// Resolves once any watched file changed since the last call (or since `new`); never
    /// resolves when the interval is zero or no file is watched.
    pub(crate) async fn changed(&mut self) -> Vec<PathBuf> {
        if self.interval.is_zero() || self.files.is_empty() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(self.interval).await;
            let mut changed = Vec::new();
            for (path, old) in &mut self.files {
                let now = stamp(path);
                if now != *old {
                    *old = now;
                    changed.push(path.clone());
                }
            }
            if !changed.is_empty() {
                return changed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn notices_replaced_files_and_symlink_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1");
        let v2 = dir.path().join("v2");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v1.join("tls.crt"), "one").unwrap();
        std::fs::write(v2.join("tls.crt"), "two").unwrap();
        // the Kubernetes Secret layout: tls.crt -> ..data/tls.crt, ..data -> v1
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink(&v1, &data).unwrap();
        let cert = dir.path().join("tls.crt");
        std::os::unix::fs::symlink(data.join("tls.crt"), &cert).unwrap();
        let mut w = CertWatch {
            interval: Duration::from_secs(5),
            files: vec![(cert.clone(), stamp(&cert))],
        };
        // nothing changes: still waiting after a minute
        let waited = tokio::time::timeout(Duration::from_secs(60), w.changed()).await;
        assert!(waited.is_err());
        // the atomic swap cert-manager/kubelet does
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&v2, &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(60), w.changed())
            .await
            .unwrap();
        assert_eq!(changed, vec![cert.clone()]);
        // and a file rewritten in place
        std::fs::write(v2.join("tls.crt"), "three, longer").unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(60), w.changed())
            .await
            .unwrap();
        assert_eq!(changed, vec![cert]);
    }
}
