//! The `trackproxy` binary as a child process (for what only the binary does: signals, exit
//! codes, the JSON log on stdout).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::eventually;

/// The `trackproxy` binary running as a child process, listening on ephemeral loopback ports
/// (set through `TRACKPROXY__…` overrides), its JSON log collected line by line.
pub struct BinProxy {
    pub child: tokio::process::Child,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Whether stdout is being read (see [`BinProxy::pause_stdout`]).
    reading: tokio::sync::watch::Sender<bool>,
    /// The tasks reading stdout and stderr; they end at end of file, after the process exits.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl BinProxy {
    /// Starts `trackproxy serve` (with `--config` if given) and waits until it listens.
    pub async fn start(config: Option<&Path>, env: &[(&str, &str)]) -> Self {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_trackproxy"));
        cmd.arg("serve");
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.env_remove("RUST_LOG")
            .env("TRACKPROXY__SERVER__HTTPS_LISTEN", "127.0.0.1:0")
            .env("TRACKPROXY__SERVER__HTTP_LISTEN", "127.0.0.1:0")
            .env("TRACKPROXY__ADMIN__LISTEN", "127.0.0.1:0")
            .env("TRACKPROXY__LOG__FORMAT", "json");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel::<(SocketAddr, SocketAddr, SocketAddr)>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        let (reading, mut gate) = tokio::sync::watch::channel(true);
        let out_reader = tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut tx = Some(tx);
            let mut r = tokio::io::BufReader::new(stdout).lines();
            loop {
                if gate.wait_for(|reading| *reading).await.is_err() {
                    break;
                }
                let Ok(Some(line)) = r.next_line().await else {
                    break;
                };
                let v = serde_json::from_str::<serde_json::Value>(&line).unwrap_or_default();
                if v["message"] == "trackproxy listening" {
                    let https = v["https"].as_str().unwrap().parse().unwrap();
                    let http = v["http"].as_str().unwrap().parse().unwrap();
                    let admin = v["admin"].as_str().unwrap().parse().unwrap();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((https, http, admin));
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let lines = log.clone();
        let err_reader = tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut r = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = r.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        let (https, http, admin) = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .unwrap_or_else(|_| panic!("trackproxy did not start: {:?}", log.lock().unwrap()))
            .unwrap_or_else(|_| panic!("trackproxy exited: {:?}", log.lock().unwrap()));
        BinProxy {
            child,
            https,
            http,
            admin,
            log,
            reading,
            readers: vec![out_reader, err_reader],
        }
    }

    /// Waits (at most `limit`) for the process to exit and for its stdout and stderr to be read
    /// to the end, so that [`BinProxy::log_lines`] then holds every line it wrote; panics on
    /// timeout.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.resume_stdout();
        let readers = std::mem::take(&mut self.readers);
        let child = &mut self.child;
        let waited = tokio::time::timeout(limit, async move {
            let status = child.wait().await.expect("wait for trackproxy");
            for r in readers {
                let _ = r.await;
            }
            status
        })
        .await;
        match waited {
            Ok(status) => status,
            Err(_) => panic!(
                "trackproxy did not exit within {limit:?}: {:?}",
                self.log_lines()
            ),
        }
    }

    /// Stops reading the proxy's stdout (after the line being read): once the pipe's buffer
    /// is full, the proxy's writes to stdout block, as when a log collector hangs.
    pub fn pause_stdout(&self) {
        self.reading.send_replace(false);
    }

    /// Reads stdout again.
    pub fn resume_stdout(&self) {
        self.reading.send_replace(true);
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// The process id, or 0 once the process was waited for.
    pub fn pid_or_exited(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Sends a signal with kill(1).
    pub async fn signal(&self, sig: &str) {
        let st = tokio::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .await
            .unwrap();
        assert!(st.success());
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The JSON log lines for which `pred` holds, once at least `n` of them have arrived
    /// (the log is written asynchronously); panics after 10 s.
    pub async fn wait_for_lines(
        &self,
        n: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        eventually(
            &format!("{n} matching log lines"),
            Duration::from_secs(10),
            async || {
                let lines = self.log_lines();
                let found: Vec<serde_json::Value> = lines
                    .iter()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter(|v| pred(v))
                    .collect();
                if found.len() >= n {
                    Ok(found)
                } else {
                    Err(lines)
                }
            },
        )
        .await
    }
}
