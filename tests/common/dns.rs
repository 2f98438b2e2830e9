//! A real DNS server for tests: Debian's `dnsmasq` on a free loopback port, serving the
//! records a test gives it. Names under `.test` it does not know get `NXDOMAIN`; nothing is
//! forwarded anywhere. Killed on drop.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::sync::oneshot;

pub struct Dnsmasq {
    pub addr: SocketAddr,
    child: tokio::process::Child,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// `--host-record=NAME,IP`
pub fn a(name: &str, ip: &str) -> String {
    format!("--host-record={name},{ip}")
}

/// `--cname=ALIAS,TARGET` (dnsmasq only serves it when it knows the target).
pub fn cname(alias: &str, target: &str) -> String {
    format!("--cname={alias},{target}")
}

/// A CAA record (type 257) in RFC 8659 wire form: flags, tag length, tag, value.
pub fn caa(name: &str, flags: u8, tag: &str, value: &str) -> String {
    let mut rdata = vec![flags, u8::try_from(tag.len()).unwrap()];
    rdata.extend_from_slice(tag.as_bytes());
    rdata.extend_from_slice(value.as_bytes());
    let hex: String = rdata.iter().map(|b| format!("{b:02x}")).collect();
    format!("--dns-rr={name},257,{hex}")
}

impl Dnsmasq {
    /// Starts dnsmasq with `records` (dnsmasq options, see [`a`], [`cname`], [`caa`]) and
    /// waits until it has bound its sockets.
    pub async fn start(records: &[String]) -> Self {
        let mut last_log = Vec::new();
        // The port is chosen here and bound by dnsmasq a moment later; another process may
        // take it in between, so retry a few times.
        for _ in 0..5 {
            match Self::try_start(records).await {
                Ok(d) => return d,
                Err(log) => last_log = log,
            }
        }
        panic!("dnsmasq did not start: {last_log:#?}");
    }

    async fn try_start(records: &[String]) -> Result<Self, Vec<String>> {
        let port = super::unused_udp_tcp_port();
        let dir = tempfile::tempdir().unwrap();
        // Debian installs it in /usr/sbin, which is not on every user's PATH.
        let program = if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
            "/usr/sbin/dnsmasq"
        } else {
            "dnsmasq"
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local=/test/",
            "--log-facility=-",
            "--log-queries",
            "--cache-size=0",
        ])
        .arg(format!("--port={port}"))
        .arg(format!(
            "--pid-file={}",
            dir.path().join("dnsmasq.pid").display()
        ))
        .args(records)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .expect("dnsmasq must be installed (apt-get install -y dnsmasq-base)");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel::<()>();
        let lines = log.clone();
        let stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut r = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = r.next_line().await {
                // Sockets are bound before this line is logged.
                if line.contains(": started, version")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let started = tokio::time::timeout(Duration::from_secs(10), rx).await;
        if matches!(started, Ok(Ok(()))) {
            Ok(Dnsmasq {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child,
                log,
                _dir: dir,
            })
        } else {
            let _ = child.kill().await;
            let lines = log.lock().unwrap().clone();
            Err(lines)
        }
    }

    /// What dnsmasq logged (one line per query and answer).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
