//! The proxies under test, each started as child processes with a configuration the harness
//! writes, on ephemeral loopback ports, and what `/proc` says about them (CPU time, RSS).
//!
//! With logging on, each logs every request as a user runs it, with the same fields (those of
//! trackproxy's access log, README "Logs"), to a file in the run's directory: trackproxy with its
//! shipped logging (`info`, JSON lines to stdout, stdout sent to the file); nginx to a buffered
//! access log (`buffer=64k flush=1s`); HAProxy with `log stdout format raw` in the foreground
//! (as its container image is run: it writes each line itself, where a syslog target would put
//! the cost in another process that the harness does not count), stdout sent to the file.

use std::fmt::{self, Write as _};
use std::io::BufRead as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::{Child, Command};

use crate::pki::{HOST, Pki};
use crate::upstream::Upstream;

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Which {
    /// This project's binary.
    Trackproxy,
    /// nginx from the Debian package.
    Nginx,
    /// HAProxy from the Debian package.
    Haproxy,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Which::Trackproxy => "trackproxy",
            Which::Nginx => "nginx",
            Which::Haproxy => "HAProxy",
        })
    }
}

/// How the proxies reach the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scheme {
    /// TLS, the certificate verified (as sendgrid.net is reached).
    Https,
    /// Plain HTTP (an upstream on the same host or network).
    Http,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        })
    }
}

/// Whether the proxies log every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Logging {
    /// Access logs on, as each is run (see the module documentation).
    On,
    /// No access log: trackproxy at `log.level = "warn"`, nginx `access_log off`, HAProxy
    /// without `log`.
    Off,
}

impl fmt::Display for Logging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Logging::On => "on",
            Logging::Off => "off",
        })
    }
}

/// What a proxy is started with for one measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    /// Access logs.
    pub(crate) logging: Logging,
    /// Which upstream.
    pub(crate) upstream: Scheme,
    /// Make nginx log `$ssl_session_reused` for every request (it has no counter of its own;
    /// used in the new-connection scenarios only).
    pub(crate) count_handshakes: bool,
}

/// What the proxies are started with.
pub(crate) struct Env {
    /// Scratch directory (configs, logs, nginx temp files).
    pub(crate) dir: PathBuf,
    /// Certificates.
    pub(crate) pki: Pki,
    /// The upstream over TLS.
    pub(crate) https: Upstream,
    /// The upstream over plain HTTP.
    pub(crate) http: Upstream,
    /// The trackproxy binary.
    pub(crate) trackproxy: PathBuf,
    /// The nginx binary.
    pub(crate) nginx: PathBuf,
    /// The haproxy binary.
    pub(crate) haproxy: PathBuf,
    /// Worker threads (trackproxy, `TOKIO_WORKER_THREADS`; HAProxy, `nbthread`) and worker
    /// processes (nginx, `worker_processes`); `None`: trackproxy's default (one per core),
    /// nginx 1, HAProxy 1.
    pub(crate) workers: Option<usize>,
    /// Connections a proxy must take at once (HAProxy's `maxconn`; the others have no lower
    /// limit than the harness's).
    pub(crate) max_connections: usize,
}

impl Env {
    /// The upstream reached over `scheme`.
    pub(crate) fn upstream(&self, scheme: Scheme) -> &Upstream {
        match scheme {
            Scheme::Https => &self.https,
            Scheme::Http => &self.http,
        }
    }
}

/// Client/server handshake counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Handshakes {
    /// Full handshakes.
    pub(crate) full: u64,
    /// Resumed sessions.
    pub(crate) resumed: u64,
}

/// What a proxy said about its run, read when it was stopped.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stopped {
    /// Handshakes as the server counted them (trackproxy's metric, HAProxy's stats, nginx's
    /// `$ssl_session_reused` log); `None` where there is no count.
    pub(crate) handshakes: Option<Handshakes>,
    /// What its access log holds (`None` with logging off).
    pub(crate) log: Option<LogStats>,
}

/// A proxy's access log, read after the run: its request lines and the times it logged for
/// them (warm-up included), to tell time spent inside the proxy from time the client saw.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogStats {
    /// Request lines.
    pub(crate) lines: u64,
    /// The logged request time (request head to the response's end; nginx's `$request_time`,
    /// HAProxy's `%Ta`, both in whole milliseconds): its median and 99th percentile.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// The logged wait for the upstream's response head (`upstream_ms`,
    /// `$upstream_header_time`, `%Tr`): 99th percentile.
    pub(crate) upstream_p99_ms: f64,
}

/// A running proxy; killed when dropped.
pub(crate) struct Running {
    /// Which one.
    pub(crate) which: Which,
    /// Its HTTPS listener.
    pub(crate) addr: SocketAddr,
    child: Child,
    /// Process ids whose CPU and memory count (nginx, HAProxy: master and workers).
    pids: Vec<u32>,
    files: Files,
}

/// Where a started proxy's output goes, and how to ask it for its handshake count.
#[derive(Default)]
struct Files {
    /// trackproxy's admin listener (its handshake metric).
    admin: Option<SocketAddr>,
    /// HAProxy's stats socket (its handshake counters).
    stats: Option<PathBuf>,
    /// nginx's `$ssl_session_reused` log, when enabled.
    reuse_log: Option<PathBuf>,
    /// The access log, with logging on.
    access_log: Option<PathBuf>,
    /// Where its errors go (shown when it fails).
    log: PathBuf,
}

/// Marks an access-log line in all three formats (trackproxy's JSON has it; the other two are
/// written with it).
const ACCESS_MARK: &[u8] = br#""message":"request""#;

impl Running {
    /// Starts `which` with `setup`.
    pub(crate) async fn start(which: Which, env: &Env, setup: Setup) -> Result<Self> {
        let mut last = None;
        // Ports are picked by binding :0 and releasing them; another process could take one in
        // between, so retry with fresh ports.
        for _ in 0..3 {
            match Self::try_start(which, env, setup).await {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("{which} did not start")))
    }

    async fn try_start(which: Which, env: &Env, setup: Setup) -> Result<Self> {
        let https = free_port()?;
        let (mut child, files) = match which {
            Which::Trackproxy => start_trackproxy(env, setup, https)?,
            Which::Nginx => start_nginx(env, setup, https)?,
            Which::Haproxy => start_haproxy(env, setup, https)?,
        };
        let pid = child.id().context("child has no pid")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                let log_text = std::fs::read_to_string(&files.log).unwrap_or_default();
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
        if which != Which::Trackproxy {
            // The master forks its worker after binding: wait for it.
            loop {
                let workers = children_of(pid);
                if !workers.is_empty() {
                    pids.extend(workers);
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{which} started no worker");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(Running {
            which,
            addr: SocketAddr::from(([127, 0, 0, 1], https)),
            child,
            pids,
            files,
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

    /// Stops the proxy gracefully (nginx's and HAProxy's workers finish and flush their logs),
    /// and returns its handshake count and the lines of its access log, which it then deletes.
    pub(crate) async fn stop(mut self) -> Result<Stopped> {
        // Counters kept in the process are read while it runs.
        let mut handshakes = match self.which {
            Which::Trackproxy => match self.files.admin {
                Some(admin) => scrape(admin)
                    .await
                    .as_deref()
                    .and_then(parse_handshake_metric),
                None => None,
            },
            Which::Haproxy => match &self.files.stats {
                Some(sock) => haproxy_handshakes(sock).await,
                None => None,
            },
            Which::Nginx => None,
        };
        let sig = match self.which {
            Which::Nginx => "-QUIT",
            // HAProxy's master: soft stop.
            Which::Haproxy => "-USR1",
            Which::Trackproxy => "-TERM",
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = self.child.id() {
                let _ = Command::new("kill")
                    .args([sig, &pid.to_string()])
                    .status()
                    .await;
            }
            // HAProxy's master re-executes itself after starting its worker, and a signal that
            // arrives meanwhile is lost (seen here in about 1 start in 8, stopping it right
            // after it listens): it is sent again each second. Once is enough for the others.
            let wait = if self.which == Which::Haproxy {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(10)
            };
            let exited = tokio::time::timeout(wait, self.child.wait()).await.is_ok();
            if exited {
                break;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill().await;
                bail!(
                    "{} did not stop within 10 s; log: {}",
                    self.which,
                    self.files.log.display()
                );
            }
        }
        if let Some(path) = &self.files.reuse_log {
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
            handshakes = Some(h);
            let _ = std::fs::remove_file(path);
        }
        let log = match &self.files.access_log {
            Some(path) => {
                let stats = access_log(path)?;
                // A measurement writes up to a few hundred MB: keep the disk use bounded.
                let _ = std::fs::remove_file(path);
                Some(stats)
            }
            None => None,
        };
        Ok(Stopped { handshakes, log })
    }
}

/// Reads an access log: its request lines and the times logged in them.
fn access_log(path: &Path) -> Result<LogStats> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening the access log {}", path.display()))?;
    let mut lines = 0;
    let mut total = Vec::new();
    let mut upstream = Vec::new();
    for line in std::io::BufReader::with_capacity(1 << 20, file).split(b'\n') {
        let line = line?;
        // The mark is near the start of a line in every format.
        let head = &line[..line.len().min(160)];
        if !head.windows(ACCESS_MARK.len()).any(|w| w == ACCESS_MARK) {
            continue;
        }
        lines += 1;
        if let Some(ms) = logged_ms(&line, DURATION_KEYS) {
            total.push(ms);
        }
        if let Some(ms) = logged_ms(&line, UPSTREAM_KEYS) {
            upstream.push(ms);
        }
    }
    total.sort_unstable_by(f64::total_cmp);
    upstream.sort_unstable_by(f64::total_cmp);
    Ok(LogStats {
        lines,
        p50_ms: quantile(&total, 0.50),
        p99_ms: quantile(&total, 0.99),
        upstream_p99_ms: quantile(&upstream, 0.99),
    })
}

/// Where each format logs a request's time: trackproxy's and HAProxy's JSON (`duration_ms`,
/// a number of milliseconds), nginx's (`duration`, a string of seconds).
const DURATION_KEYS: &[(&[u8], f64)] = &[(br#""duration_ms":"#, 1.0), (br#""duration":""#, 1000.0)];
/// And the wait for the upstream's response head.
const UPSTREAM_KEYS: &[(&[u8], f64)] = &[(br#""upstream_ms":"#, 1.0), (br#""upstream":""#, 1000.0)];

/// The first of `keys` found in `line`, its number scaled to milliseconds. `None` when absent
/// or not a number (nginx's `-`, HAProxy's `-1` for no upstream answer).
fn logged_ms(line: &[u8], keys: &[(&[u8], f64)]) -> Option<f64> {
    keys.iter().find_map(|&(key, scale)| {
        let at = line.windows(key.len()).position(|w| w == key)? + key.len();
        let rest = &line[at..];
        let end = rest
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'.'))
            .unwrap_or(rest.len());
        let v: f64 = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
        Some(v * scale)
    })
}

/// The `q` quantile of sorted `v`; 0 when empty.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

/// Runs `trackproxy serve --config PATH`, its stdout and stderr to a file, with `--workers`
/// runtime threads if given (tokio's own `TOKIO_WORKER_THREADS`; by default one per core).
fn start_trackproxy(env: &Env, setup: Setup, https: u16) -> Result<(Child, Files)> {
    let admin = free_port()?;
    let cfg = crate::job::trackproxy_config(
        &env.pki,
        &env.upstream(setup.upstream).url(),
        https,
        free_port()?,
        admin,
        match setup.logging {
            Logging::On => None,
            Logging::Off => Some("warn"),
        },
    );
    let path = env.dir.join("trackproxy.toml");
    std::fs::write(&path, cfg)?;
    let log = env.dir.join("trackproxy.log");
    let out = std::fs::File::create(&log)?;
    let mut cmd = Command::new(&env.trackproxy);
    cmd.env_remove("TOKIO_WORKER_THREADS");
    if let Some(w) = env.workers {
        cmd.env("TOKIO_WORKER_THREADS", w.to_string());
    }
    let child = cmd
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", env.trackproxy.display()))?;
    let files = Files {
        admin: Some(SocketAddr::from(([127, 0, 0, 1], admin))),
        access_log: (setup.logging == Logging::On).then(|| log.clone()),
        log,
        ..Files::default()
    };
    Ok((child, files))
}

fn start_nginx(env: &Env, setup: Setup, https: u16) -> Result<(Child, Files)> {
    let prefix = env.dir.join("nginx");
    std::fs::create_dir_all(prefix.join("tmp"))?;
    let files = Files {
        reuse_log: setup.count_handshakes.then(|| prefix.join("reused.log")),
        access_log: (setup.logging == Logging::On).then(|| prefix.join("access.log")),
        log: prefix.join("error.log"),
        ..Files::default()
    };
    for p in [&files.reuse_log, &files.access_log].into_iter().flatten() {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_file(&files.log);
    let cfg = nginx_config(env, setup, &prefix, https, &files);
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, cfg)?;
    let child = Command::new(&env.nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(&files.log)
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
    Ok((child, files))
}

/// Runs `haproxy -W -db -f FILE` (master-worker, in the foreground), stdout (its log) and
/// stderr to files.
fn start_haproxy(env: &Env, setup: Setup, https: u16) -> Result<(Child, Files)> {
    let dir = env.dir.join("haproxy");
    std::fs::create_dir_all(&dir)?;
    // `crt` takes the chain and the key in one file.
    let crt = dir.join("proxy.pem");
    std::fs::write(
        &crt,
        [
            std::fs::read(&env.pki.proxy_cert)?,
            std::fs::read(&env.pki.proxy_key)?,
        ]
        .concat(),
    )?;
    let stats = dir.join("stats.sock");
    let _ = std::fs::remove_file(&stats);
    let files = Files {
        stats: Some(stats),
        access_log: (setup.logging == Logging::On).then(|| dir.join("access.log")),
        log: dir.join("stderr.log"),
        ..Files::default()
    };
    let cfg = haproxy_config(env, setup, &crt, https, &files);
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let stdout = match &files.access_log {
        Some(p) => Stdio::from(std::fs::File::create(p)?),
        None => Stdio::null(),
    };
    let child = Command::new(&env.haproxy)
        .args(["-W", "-db", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(std::fs::File::create(&files.log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (install it: apt-get install -y haproxy)",
                env.haproxy.display()
            )
        })?;
    Ok((child, files))
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// nginx doing the job: one worker (as in the issue's reference figures) unless `--workers`;
/// an upstream keep-alive pool larger than the peak concurrency (32 × 10 h2 streams);
/// `keepalive_requests` raised from its default of 1000 so no connection is closed during a
/// run.
fn nginx_config(env: &Env, setup: Setup, prefix: &Path, https: u16, files: &Files) -> String {
    let mut log = String::new();
    if let Some(p) = &files.access_log {
        // trackproxy's fields (README "Logs"); nginx's times are in seconds.
        log.push_str(concat!(
            r#"log_format access escape=json '{"timestamp":"$time_iso8601","level":"INFO","#,
            r#""message":"request","client":"$remote_addr","host":"$host","#,
            r#""method":"$request_method","path":"$uri","status":$status,"#,
            r#""bytes":$body_bytes_sent,"duration":"$request_time","#,
            r#""upstream":"$upstream_header_time","version":"$server_protocol","#,
            r#""tls":"$ssl_protocol","request_id":"$request_id","#,
            r#""user_agent":"$http_user_agent","completed":"$request_completion"}';"#,
        ));
        let _ = write!(
            log,
            "\n    access_log {} access buffer=64k flush=1s;\n    ",
            p.display()
        );
    }
    if let Some(p) = &files.reuse_log {
        let _ = write!(
            log,
            "log_format reused '$ssl_session_reused';\n    access_log {} reused buffer=256k;",
            p.display()
        );
    }
    if log.is_empty() {
        log.push_str("access_log off;");
    }
    let up = env.upstream(setup.upstream).addr.port();
    let (scheme, upstream_tls) = match setup.upstream {
        Scheme::Https => (
            "https",
            format!(
                "
            proxy_ssl_server_name on;
            proxy_ssl_name localhost;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {};
            proxy_ssl_session_reuse on;",
                env.pki.ca.display()
            ),
        ),
        Scheme::Http => ("http", String::new()),
    };
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
            proxy_pass {scheme}://sendgrid;
            proxy_http_version 1.1;
            proxy_set_header Connection '';
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;{upstream_tls}
        }}
    }}
}}
",
        prefix = prefix.display(),
        cert = env.pki.proxy_cert.display(),
        key = env.pki.proxy_key.display(),
        workers = env.workers.unwrap_or(1),
    )
}

/// HAProxy doing the job: `nbthread 1` unless `--workers`, HTTP/2 and HTTP/1.1 (ALPN),
/// `X-Forwarded-*` like trackproxy's, `Host` kept (HAProxy does not touch it), upstream
/// connections shared between clients (`http-reuse always`), upstream TLS verified. The client's
/// cipher order is followed (`prefer-client-ciphers`), as nginx and trackproxy do, so all three
/// do the same crypto. The stats socket gives its handshake counters.
fn haproxy_config(env: &Env, setup: Setup, crt: &Path, https: u16, files: &Files) -> String {
    let (global_log, defaults_log, frontend_log) = if files.access_log.is_some() {
        (
            "log stdout format raw local0 info",
            "log global",
            // trackproxy's fields (README "Logs"); captures, because the request is gone when
            // the line is written.
            concat!(
                "http-request capture req.hdr(host) len 128\n    ",
                "http-request capture req.hdr(user-agent) len 512\n    ",
                "unique-id-format %[uuid()]\n    ",
                r#"log-format '{"timestamp":"%tr","level":"INFO","message":"request","#,
                r#""client":"%ci","host":%{+Q,+E}[capture.req.hdr(0)],"method":"%HM","#,
                r#""path":%{+Q,+E}HPO,"status":%ST,"bytes":%B,"duration_ms":%Ta,"#,
                r#""upstream_ms":%Tr,"version":"%HV","tls":"%sslv","request_id":"%ID","#,
                r#""user_agent":%{+Q,+E}[capture.req.hdr(1)],"completed":"%ts"}'"#,
            ),
        )
    } else {
        ("", "", "")
    };
    let up = env.upstream(setup.upstream).addr.port();
    let upstream_tls = match setup.upstream {
        Scheme::Https => format!(
            " ssl verify required ca-file {} sni str(localhost) verifyhost localhost",
            env.pki.ca.display()
        ),
        Scheme::Http => String::new(),
    };
    format!(
        r"global
    nbthread {threads}
    maxconn {maxconn}
    stats socket {stats} mode 600 level user
    ssl-default-bind-options prefer-client-ciphers
    {global_log}

defaults
    mode http
    {defaults_log}
    maxconn {maxconn}
    option forwardfor
    http-reuse always
    timeout connect 3s
    timeout server 30s
    timeout client 600s
    timeout http-request 600s
    timeout http-keep-alive 600s

frontend tracking
    bind 127.0.0.1:{https} ssl crt {crt} alpn h2,http/1.1
    {frontend_log}
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend sendgrid

backend sendgrid
    server up 127.0.0.1:{up} maxconn 1024{upstream_tls}
",
        threads = env.workers.unwrap_or(1),
        maxconn = env.max_connections,
        stats = files.stats.as_deref().unwrap_or(Path::new("")).display(),
        crt = crt.display(),
    )
}

/// HAProxy's frontend TLS counters from `show stat` on its stats socket: `ssl_sess` counts
/// the handshakes that did not resume a session, `ssl_reused_sess` those that did
/// (`ssl_sock_handshake` in HAProxy's `src/ssl_sock.c`).
async fn haproxy_handshakes(sock: &Path) -> Option<Handshakes> {
    let text = tokio::time::timeout(Duration::from_secs(2), async {
        let mut s = UnixStream::connect(sock).await.ok()?;
        s.write_all(b"show stat\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        Some(out)
    })
    .await
    .ok()??;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (sess, reused) = (col("ssl_sess")?, col("ssl_reused_sess")?);
    let row: Vec<&str> = lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|r| r.first() == Some(&"tracking") && r.get(1) == Some(&"FRONTEND"))?;
    let sess: u64 = row.get(sess)?.parse().ok()?;
    let reused: u64 = row.get(reused)?.parse().ok()?;
    Some(Handshakes {
        full: sess,
        resumed: reused,
    })
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
