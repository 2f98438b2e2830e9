//! The two proxies under test, each started as child processes with a configuration the harness
//! writes, on ephemeral loopback ports, and what `/proc` says about them (CPU time, RSS).

use std::fmt;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::pki::{HOST, Pki};

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Which {
    /// This project's binary.
    Trackproxy,
    /// nginx from the Debian package.
    Nginx,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Which::Trackproxy => "trackproxy",
            Which::Nginx => "nginx",
        })
    }
}

/// What the proxies are started with.
pub(crate) struct Env {
    /// Scratch directory (configs, logs, nginx temp files).
    pub(crate) dir: PathBuf,
    /// Certificates.
    pub(crate) pki: Pki,
    /// The upstream both forward to.
    pub(crate) upstream: SocketAddr,
    /// The trackproxy binary.
    pub(crate) trackproxy: PathBuf,
    /// The nginx binary.
    pub(crate) nginx: PathBuf,
    /// Worker threads (trackproxy, `TOKIO_WORKER_THREADS`) and worker processes (nginx,
    /// `worker_processes`); `None`: trackproxy's default (one per core), nginx 1.
    pub(crate) workers: Option<usize>,
}

/// Client/server handshake counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Handshakes {
    /// Full handshakes.
    pub(crate) full: u64,
    /// Resumed sessions.
    pub(crate) resumed: u64,
}

/// A running proxy; killed when dropped.
pub(crate) struct Running {
    /// Which one.
    pub(crate) which: Which,
    /// Its HTTPS listener.
    pub(crate) addr: SocketAddr,
    child: Child,
    /// Process ids whose CPU and memory count (nginx: master and workers).
    pids: Vec<u32>,
    /// trackproxy's admin listener (for its handshake metric).
    admin: Option<SocketAddr>,
    /// nginx's `$ssl_session_reused` log, when enabled.
    reuse_log: Option<PathBuf>,
    /// Where its stdout/stderr/error log go.
    log: PathBuf,
}

impl Running {
    /// Starts `which`. `count_handshakes` makes nginx log `$ssl_session_reused` for every
    /// request (used in the new-connection scenario only: otherwise its access log is off).
    pub(crate) async fn start(which: Which, env: &Env, count_handshakes: bool) -> Result<Self> {
        let mut last = None;
        // Ports are picked by binding :0 and releasing them; another process could take one in
        // between, so retry with fresh ports.
        for _ in 0..3 {
            match Self::try_start(which, env, count_handshakes).await {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("{which} did not start")))
    }

    async fn try_start(which: Which, env: &Env, count_handshakes: bool) -> Result<Self> {
        let https = free_port()?;
        let (mut child, admin, reuse_log, log) = match which {
            Which::Trackproxy => {
                let http = free_port()?;
                let admin = free_port()?;
                let cfg = crate::job::trackproxy_config(
                    &env.pki,
                    env.upstream.port(),
                    https,
                    http,
                    admin,
                );
                let path = env.dir.join("trackproxy.toml");
                std::fs::write(&path, cfg)?;
                let log = env.dir.join("trackproxy.log");
                let child = spawn_trackproxy(env, &path, &log)?;
                (child, Some(admin), None, log)
            }
            Which::Nginx => {
                let prefix = env.dir.join("nginx");
                std::fs::create_dir_all(prefix.join("tmp"))?;
                let reuse_log = count_handshakes.then(|| prefix.join("reused.log"));
                if let Some(p) = &reuse_log {
                    let _ = std::fs::remove_file(p);
                }
                let cfg = nginx_config(env, &prefix, https, reuse_log.as_deref());
                let path = prefix.join("nginx.conf");
                std::fs::write(&path, cfg)?;
                let log = prefix.join("error.log");
                let _ = std::fs::remove_file(&log);
                let child = Command::new(&env.nginx)
                    .arg("-p")
                    .arg(&prefix)
                    .arg("-c")
                    .arg(&path)
                    .arg("-e")
                    .arg(&log)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| {
                        format!(
                            "starting {} (install it: apt-get install -y nginx-light)",
                            env.nginx.display()
                        )
                    })?;
                (child, None, reuse_log, log)
            }
        };
        let pid = child.id().context("child has no pid")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("{which} exited at start ({status}): {err}{log_text}");
            }
            if TcpStream::connect(("127.0.0.1", https)).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{which} did not listen within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut pids = vec![pid];
        if which == Which::Nginx {
            // The master forks its worker after binding: wait for it.
            loop {
                let workers = children_of(pid);
                if !workers.is_empty() {
                    pids.extend(workers);
                    break;
                }
                if Instant::now() > deadline {
                    bail!("nginx started no worker");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(Running {
            which,
            addr: SocketAddr::from(([127, 0, 0, 1], https)),
            child,
            pids,
            admin: admin.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            reuse_log,
            log,
        })
    }

    /// User + system CPU time of the proxy's processes so far, in seconds.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        self.pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
    }

    /// Peak resident memory (sum of `VmHWM` of its processes), KiB.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        self.pids
            .iter()
            .filter_map(|p| status_kib(*p, "VmHWM:"))
            .sum()
    }

    /// Current resident memory (sum of `VmRSS`), KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        self.pids
            .iter()
            .filter_map(|p| status_kib(*p, "VmRSS:"))
            .sum()
    }

    /// Handshakes as trackproxy counts them (its `trackproxy_tls_handshakes_total` metric),
    /// read before stopping it. `None` when the metric is not there.
    pub(crate) async fn trackproxy_handshakes(&self) -> Option<Handshakes> {
        // HOOK: trackproxy_tls_handshakes_total{kind="full"|"resumed"} comes with the admin
        // listener's /metrics (another issue). Until it exists this returns None and the run
        // relies on the client-side count alone.
        let admin = self.admin?;
        let text = scrape(admin).await?;
        parse_handshake_metric(&text)
    }

    /// Stops the proxy gracefully and returns nginx's server-side handshake count (from its
    /// `$ssl_session_reused` log, complete once the worker has exited and flushed it).
    pub(crate) async fn stop(mut self) -> Result<Option<Handshakes>> {
        let sig = match self.which {
            // Graceful: workers finish, flush their buffered logs, exit.
            Which::Nginx => "-QUIT",
            Which::Trackproxy => "-TERM",
        };
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
            bail!(
                "{} did not stop within 10 s; log: {}",
                self.which,
                self.log.display()
            );
        }
        let Some(path) = &self.reuse_log else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading nginx's handshake log {}", path.display()))?;
        let mut h = Handshakes::default();
        for line in text.lines() {
            match line.trim() {
                "r" => h.resumed += 1,
                "." => h.full += 1,
                _ => {}
            }
        }
        Ok(Some(h))
    }
}

/// Runs `trackproxy serve --config PATH`, output to `log`, with `--workers` runtime threads if
/// given (tokio's own `TOKIO_WORKER_THREADS`; by default one per core).
fn spawn_trackproxy(env: &Env, config: &Path, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    let mut cmd = Command::new(&env.trackproxy);
    cmd.env_remove("TOKIO_WORKER_THREADS");
    if let Some(w) = env.workers {
        cmd.env("TOKIO_WORKER_THREADS", w.to_string());
    }
    cmd.args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", env.trackproxy.display()))
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn nginx_config(env: &Env, prefix: &Path, https: u16, reuse_log: Option<&Path>) -> String {
    let log = reuse_log.map_or_else(
        || "access_log off;".to_owned(),
        |p| {
            format!(
                "log_format reused '$ssl_session_reused';\n    access_log {} reused buffer=256k;",
                p.display()
            )
        },
    );
    // One worker (as in the issue's reference figures) unless `--workers`; the upstream
    // keep-alive pool is larger
    // than the peak concurrency (32 × 10 h2 streams), and keepalive_requests is raised from its
    // default of 1000 so no connection is closed during a run.
    format!(
        r"worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 32768;
}}

http {{
    {log}
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    http2_max_concurrent_streams 128;

    upstream sendgrid {{
        server 127.0.0.1:{up};
        keepalive 1024;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}

    server {{
        listen 127.0.0.1:{https} ssl http2;
        server_name {HOST};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1;

        location / {{
            proxy_pass https://sendgrid;
            proxy_http_version 1.1;
            proxy_set_header Connection '';
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_ssl_server_name on;
            proxy_ssl_name localhost;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_session_reuse on;
        }}
    }}
}}
",
        prefix = prefix.display(),
        up = env.upstream.port(),
        cert = env.pki.proxy_cert.display(),
        key = env.pki.proxy_key.display(),
        ca = env.pki.ca.display(),
        workers = env.workers.unwrap_or(1),
    )
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| stat_fields(*p).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid))
        .collect()
}

/// Fields of `/proc/PID/stat` after the command name: index 0 is the state (field 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// utime + stime of a process (all its threads, living and exited), seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the state.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Busy CPU time of the whole machine (all cores) so far, in seconds, from `/proc/stat`.
pub(crate) fn machine_busy_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?;
    Some(busy as f64 / USER_HZ)
}

async fn scrape(admin: SocketAddr) -> Option<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(admin))
        .await
        .ok()?
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    out.starts_with("HTTP/1.").then_some(out)
}

/// Reads `trackproxy_tls_handshakes_total{kind="full"}` and `{kind="resumed"}` from a
/// Prometheus text exposition.
fn parse_handshake_metric(text: &str) -> Option<Handshakes> {
    let mut h = Handshakes::default();
    let mut seen = false;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("trackproxy_tls_handshakes_total{") else {
            continue;
        };
        let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = value as u64;
        if rest.contains("kind=\"full\"") {
            h.full += value;
            seen = true;
        } else if rest.contains("kind=\"resumed\"") {
            h.resumed += value;
            seen = true;
        }
    }
    seen.then_some(h)
}
