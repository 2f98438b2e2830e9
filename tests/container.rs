//! The container image and the compose deployment on a real Docker engine, as a user runs them.
//!
//! The image is built from the repository's `Dockerfile` by `scripts/docker-build` (which makes
//! local stand-ins for the base images where no registry can be reached), once per test process;
//! BuildKit's cache makes a second run fast. Every container, network and volume gets a name of
//! its own and is removed on drop, failed test or not. Traffic goes only to loopback (published
//! ports bound to 127.0.0.1) and to containers on networks these tests create.
//!
//! A machine without a Docker engine fails these tests; it does not skip them.

#![allow(clippy::pedantic, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

const IMAGE: &str = "trackproxy:dev";
/// Debian + python3 (scripts/docker-standins): the stand-in ESP and the load generator.
const TOOLS: &str = "trackproxy-standin/tools";
/// Debian's HAProxy 2.6 standing in for the public `haproxy:2.8` of the compose file.
const HAPROXY: &str = "trackproxy-standin/haproxy:2.6";
/// The user the image runs as.
const USER: &str = "65532:65532";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker command must be installed (Debian: docker.io)")
}

/// Runs docker, fails the test unless it succeeds; its stdout, trimmed.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

/// The image and the stand-ins, built once per process. Fails without a Docker engine.
fn images() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let info = docker(&["info", "--format", "{{.ServerVersion}}"]);
        assert!(
            info.status.success(),
            "no Docker engine answers ('docker info' failed: {}): the container tests need a \
             running engine",
            text(&info.stderr).trim()
        );
        for script in [
            &["scripts/docker-build", IMAGE][..],
            &["scripts/docker-standins", "test"],
        ] {
            let started = Instant::now();
            let out = Command::new(repo().join(script[0]))
                .args(&script[1..])
                .current_dir(repo())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{} failed:\n{}{}",
                script.join(" "),
                text(&out.stdout),
                text(&out.stderr)
            );
            eprintln!(
                "{} in {:.1} s: {}",
                script.join(" "),
                started.elapsed().as_secs_f64(),
                text(&out.stdout).trim()
            );
        }
    });
}

/// A name no other test (or test process) uses.
fn unique(label: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "tpct-{}-{}-{label}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` every 100 ms until it gives `Some`, at most `limit`.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A container, removed (with its anonymous volumes) on drop.
struct Container {
    name: String,
}

impl Container {
    /// `docker run -d --name <unique> ARGS IMAGE CMD…`
    fn run(label: &str, args: &[&str], image_and_cmd: &[&str]) -> Container {
        let name = unique(label);
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        all.extend_from_slice(image_and_cmd);
        docker_ok(&all);
        Container { name }
    }

    fn inspect(&self, format: &str) -> String {
        docker_ok(&["inspect", "-f", format, &self.name])
    }

    /// Where the container's `port`/tcp is published on this machine.
    fn published(&self, port: u16) -> SocketAddr {
        let out = docker_ok(&["port", &self.name, &format!("{port}/tcp")]);
        out.lines().next().unwrap().trim().parse().unwrap()
    }

    fn ip(&self) -> String {
        self.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
    }

    /// (stdout, stderr) of `docker logs`.
    fn logs(&self) -> (String, String) {
        let out = docker(&["logs", &self.name]);
        (text(&out.stdout), text(&out.stderr))
    }

    fn running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }

    /// The exit code, once the container has stopped (bounded wait).
    fn exit_code(&self, limit: Duration) -> i32 {
        poll(limit, || (!self.running()).then_some(()))
            .unwrap_or_else(|| panic!("{} still running after {limit:?}", self.name));
        self.inspect("{{.State.ExitCode}}").parse().unwrap()
    }

    fn health(&self) -> String {
        self.inspect("{{if .State.Health}}{{.State.Health.Status}}{{end}}")
    }

    /// Waits for the image's HEALTHCHECK to report `healthy` (its interval is 10 s).
    fn wait_healthy(&self) {
        let ok = poll(Duration::from_secs(40), || {
            let h = self.health();
            assert_ne!(h, "unhealthy", "{}: {:?}", self.name, self.logs());
            (h == "healthy").then_some(())
        });
        assert!(
            ok.is_some(),
            "{} never became healthy: {:?}",
            self.name,
            self.logs()
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}

/// A Docker network of the test's own, removed on drop (declare it before its containers).
struct Network {
    name: String,
}

impl Network {
    fn create() -> Network {
        let name = unique("net");
        docker_ok(&["network", "create", &name]);
        Network { name }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A named volume, removed on drop (declare it before the containers using it).
struct Volume {
    name: String,
}

impl Volume {
    fn create() -> Volume {
        let name = unique("vol");
        docker_ok(&["volume", "create", &name]);
        Volume { name }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = docker(&["volume", "rm", "-f", &self.name]);
    }
}

/// The stand-in ESP (tests/container/esp.py) on `net`, reachable there as `esp:8080`.
fn start_esp(net: &Network) -> Container {
    let script = format!(
        "{}:/esp.py:ro",
        repo().join("tests/container/esp.py").display()
    );
    Container::run(
        "esp",
        &[
            "--network",
            &net.name,
            "--network-alias",
            "esp",
            "-v",
            &script,
        ],
        &[TOOLS, "python3", "-u", "/esp.py"],
    )
}

/// The requests the stand-in ESP recorded.
fn esp_records(esp: &Container) -> Vec<serde_json::Value> {
    esp.logs()
        .0
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// An HTTPS GET with curl from this machine: `sni` resolved to `addr`, the given Host header,
/// certificate not verified (the self-signed default); (status, body). Status 0: no answer.
fn https_get(addr: SocketAddr, sni: &str, host: &str, path: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "20", "--resolve"])
        .arg(format!("{sni}:{}:{}", addr.port(), addr.ip()))
        .args(["-H", &format!("Host: {host}"), "-w", "%{http_code}"])
        .arg(format!("https://{sni}:{}{path}", addr.port()))
        .output()
        .expect("curl must be installed");
    let mut body = out.stdout;
    let code = body.split_off(body.len().saturating_sub(3));
    (text(&code).parse().unwrap_or(0), body)
}

/// Waits until the listener at `addr` answers HTTPS at all (for a host it has a certificate of).
fn wait_serving(addr: SocketAddr, sni: &str, c: &Container) {
    let ok = poll(Duration::from_secs(20), || {
        (https_get(addr, sni, "probe.invalid", "/").0 != 0).then_some(())
    });
    assert!(
        ok.is_some(),
        "{} never answered on {addr}: {:?}",
        c.name,
        c.logs()
    );
}

/// A file readable by the image's user (tempfile makes 0600 files, owned by the test's user).
fn write_readable(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l:?}"))
        })
        .collect()
}

/// Access-log lines (`"message": "request"`) among JSON log lines.
fn access_lines(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines.iter().filter(|l| l["message"] == "request").collect()
}

#[test]
fn image_runs_the_embedded_default_as_non_root_healthy_with_json_logs() {
    images();
    // `docker run -p 8443:8443 trackproxy:dev`, published on a free loopback port instead.
    let c = Container::run("default", &["-p", "127.0.0.1::8443"], &[IMAGE]);
    let addr = c.published(8443);
    wait_serving(addr, "localhost", &c);

    let (status, _) = https_get(addr, "localhost", "unknown.example.test", "/wf/open");
    assert_eq!(status, 421, "an unknown Host gets 421 Misdirected Request");

    assert_eq!(c.inspect("{{.Config.User}}"), USER);
    let top = docker_ok(&["top", &c.name, "-eo", "pid,uid,gid,args"]);
    let procs: Vec<&str> = top.lines().skip(1).collect();
    assert!(!procs.is_empty(), "{top}");
    for p in &procs {
        let cols: Vec<&str> = p.split_whitespace().collect();
        assert_eq!(
            &cols[1..3],
            ["65532", "65532"],
            "a process not run as 65532: {p}"
        );
    }

    c.wait_healthy();

    // Every line on stdout is a JSON object (what `docker logs` and log drivers pass on); the
    // access-log line of the 421 is among them, with the fields log pipelines index on.
    let (stdout, stderr) = c.logs();
    let lines = json_lines(&stdout);
    assert!(
        stderr.trim().is_empty(),
        "nothing expected on stderr: {stderr}"
    );
    let refused: Vec<_> = access_lines(&lines)
        .into_iter()
        .filter(|l| l["host"] == "unknown.example.test")
        .collect();
    assert_eq!(refused.len(), 1, "{stdout}");
    assert_eq!(refused[0]["status"], 421);
    assert!(refused[0]["timestamp"].is_string() && refused[0]["level"] == "INFO");

    let size: f64 = docker_ok(&["image", "inspect", "-f", "{{.Size}}", IMAGE])
        .parse()
        .unwrap();
    let mib = size / 1_048_576.0;
    eprintln!("image {IMAGE}: {mib:.1} MiB");
    assert!(
        mib < 40.0,
        "the image is {mib:.1} MiB, over the 40 MiB target"
    );
}

/// An ACME configuration whose directory is unreachable (a closed port on the container's own
/// loopback), so trackproxy fails its first order and records the back-off in the cache: a write
/// into the cache directory, and no traffic anywhere.
const ACME_HOST: &str = "acme.example.test";

fn acme_config(dir: &Path) -> PathBuf {
    let path = dir.join("trackproxy.toml");
    write_readable(
        &path,
        &format!(
            "[[hosts]]\nname = \"{ACME_HOST}\"\n\n[tls.acme]\n\
             directory = \"https://127.0.0.1:9/directory\"\n\
             cache_dir = \"/var/lib/trackproxy/acme\"\n"
        ),
    );
    path
}

/// The files under /var/lib/trackproxy of container `c` (through `docker cp`, the image has no
/// shell), as tar lists them.
fn state_files(c: &Container) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker cp {}:/var/lib/trackproxy - | tar -tf -",
            c.name
        ))
        .output()
        .unwrap();
    text(&out.stdout).lines().map(str::to_owned).collect()
}

fn backoff_written(files: &[String]) -> bool {
    files
        .iter()
        .any(|f| f.ends_with(&format!("/{ACME_HOST}.backoff.json")))
}

#[test]
fn acme_cache_on_a_named_volume_and_on_a_bind_mount_is_writable() {
    images();
    let dir = tempfile::tempdir().unwrap();
    let cfg = acme_config(dir.path());
    let cfg_mount = format!("{}:/etc/trackproxy/trackproxy.toml:ro", cfg.display());
    let cfg_env = "TRACKPROXY_CONFIG=/etc/trackproxy/trackproxy.toml";

    // A new named volume over /var/lib/trackproxy, as in deploy/compose/docker-compose.yml:
    // Docker copies the image's directory (owner 65532, mode 0700) into it.
    let vol = Volume::create();
    let on_volume = Container::run(
        "acme-vol",
        &[
            "-v",
            &cfg_mount,
            "-e",
            cfg_env,
            "-v",
            &format!("{}:/var/lib/trackproxy", vol.name),
        ],
        &[IMAGE],
    );

    // A host directory, owned by the image's user (what the README says a bind mount needs).
    let host_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(host_dir.path(), Some(65532), Some(65532)).unwrap();
    let on_bind = Container::run(
        "acme-bind",
        &[
            "-v",
            &cfg_mount,
            "-e",
            cfg_env,
            "-v",
            &format!("{}:/var/lib/trackproxy", host_dir.path().display()),
        ],
        &[IMAGE],
    );

    // A host directory owned by root, mode 0755: not writable for 65532, refused at start with
    // the key named (exit 64, a configuration error).
    let root_dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let on_root_dir = Container::run(
        "acme-rootdir",
        &[
            "-v",
            &cfg_mount,
            "-e",
            cfg_env,
            "-v",
            &format!("{}:/var/lib/trackproxy", root_dir.path().display()),
        ],
        &[IMAGE],
    );

    let written = poll(Duration::from_secs(30), || {
        assert!(
            on_volume.running(),
            "trackproxy on a named volume exited {}: {:?}",
            on_volume.inspect("{{.State.ExitCode}}"),
            on_volume.logs()
        );
        backoff_written(&state_files(&on_volume)).then_some(())
    });
    assert!(
        written.is_some(),
        "nothing written to the named volume: {:?} {:?}",
        state_files(&on_volume),
        on_volume.logs()
    );

    let acme_dir = host_dir.path().join("acme");
    let written = poll(Duration::from_secs(30), || {
        assert!(on_bind.running(), "{:?}", on_bind.logs());
        let entries = std::fs::read_dir(&acme_dir).ok()?;
        let sub = entries.flatten().next()?.path();
        let backoff = sub.join(format!("{ACME_HOST}.backoff.json"));
        backoff.exists().then_some(backoff)
    });
    let backoff = written.unwrap_or_else(|| {
        panic!(
            "nothing written to the bind-mounted directory: {:?}",
            on_bind.logs()
        )
    });
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&backoff).unwrap().uid(), 65532);

    assert_eq!(on_root_dir.exit_code(Duration::from_secs(20)), 64);
    let (stdout, stderr) = on_root_dir.logs();
    assert!(
        stderr.contains("tls.acme.cache_dir") && stderr.contains("not a writable directory"),
        "{stdout}{stderr}"
    );
}

/// Runs the image on `net` with a mounted config file serving `url1234.example.test` (self-signed)
/// in front of the stand-in ESP (`http://esp:8080`), plus `extra` arguments to `docker run`.
/// The directory holding the file lives as long as the returned `TempDir`.
fn run_with_esp_config(
    label: &str,
    net: &Network,
    extra: &[&str],
) -> (tempfile::TempDir, Container) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("trackproxy.toml");
    write_readable(
        &cfg,
        "[upstream]\nurl = \"http://esp:8080\"\n\n[[hosts]]\nname = \"url1234.example.test\"\n\n\
         [tls]\nself_signed = true\n",
    );
    let mount = format!("{}:/etc/trackproxy/trackproxy.toml:ro", cfg.display());
    let mut args = vec![
        "--network",
        &net.name,
        "-v",
        &mount,
        "-e",
        "TRACKPROXY_CONFIG=/etc/trackproxy/trackproxy.toml",
    ];
    args.extend_from_slice(extra);
    let c = Container::run(label, &args, &[IMAGE]);
    (dir, c)
}

#[test]
fn config_from_a_mounted_file_and_from_environment_variables() {
    images();
    let net = Network::create();
    let esp = start_esp(&net);
    let (_dir, c) = run_with_esp_config(
        "config",
        &net,
        &[
            // The environment beats the file and the image's own TRACKPROXY__ variables.
            "-e",
            "TRACKPROXY__SERVER__HTTPS_LISTEN=0.0.0.0:9443",
            "-e",
            "TRACKPROXY__LOG__QUERY=true",
            "-p",
            "127.0.0.1::9443",
            "-p",
            "127.0.0.1::8443",
        ],
    );
    let addr = c.published(9443);
    wait_serving(addr, "url1234.example.test", &c);

    // The host comes from the file, the upstream too: the ESP answers through trackproxy.
    let (status, body) = https_get(
        addr,
        "url1234.example.test",
        "url1234.example.test",
        "/wf/open?upn=file",
    );
    assert_eq!(status, 200);
    assert_eq!(body.len(), 43, "the ESP's GIF");
    let (status, _) = https_get(
        addr,
        "url1234.example.test",
        "url1234.example.test",
        "/ls/click?upn=x",
    );
    assert_eq!(status, 302);
    let seen = esp_records(&esp);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0]["path"], "/wf/open?upn=file");
    assert_eq!(seen[0]["host"], "url1234.example.test");

    // Nothing on the image's default 8443 any more: the variable moved the listener.
    let (status, _) = https_get(c.published(8443), "url1234.example.test", "x.invalid", "/");
    assert_eq!(status, 0, "8443 still answers");
    // log.query from the environment: the access log keeps the query string (lines reach
    // stdout in batches, up to 100 ms after they were logged).
    let logged = poll(Duration::from_secs(5), || {
        let lines = json_lines(&c.logs().0);
        access_lines(&lines)
            .iter()
            .any(|l| l["path"] == "/wf/open?upn=file")
            .then_some(())
    });
    assert!(logged.is_some(), "{:?}", c.logs());
}

#[test]
fn docker_stop_drains_a_request_in_flight_and_exits_0() {
    images();
    let net = Network::create();
    let esp = start_esp(&net);
    let (_dir, c) = run_with_esp_config("stop", &net, &["-p", "127.0.0.1::8443"]);
    let addr = c.published(8443);
    wait_serving(addr, "url1234.example.test", &c);

    // A request the ESP holds for 3 s, then `docker stop` (SIGTERM, SIGKILL after its default
    // 10 s) while it is in flight.
    let in_flight = std::thread::spawn(move || {
        https_get(
            addr,
            "url1234.example.test",
            "url1234.example.test",
            "/wf/open?upn=slow&delay_ms=3000",
        )
    });
    std::thread::sleep(Duration::from_millis(800));
    let stopping = Instant::now();
    docker_ok(&["stop", &c.name]);
    let took = stopping.elapsed();
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 200, "the request in flight completes");
    assert_eq!(body.len(), 43);
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "0", "{:?}", c.logs());
    assert!(
        took < Duration::from_secs(9),
        "docker stop took {took:?}: trackproxy did not exit within the grace"
    );
    assert_eq!(esp_records(&esp).len(), 1);
    let lines = json_lines(&c.logs().0);
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "stopped accepting; waiting for in-flight requests"),
        "{lines:?}"
    );
}

// ---- compose ----

/// The compose command there is: `docker compose` (v2) or `docker-compose` (v1).
fn compose_command() -> Vec<String> {
    let v2 = docker(&["compose", "version"]);
    if v2.status.success() {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// A compose project, taken down (containers, network, volumes) on drop.
struct Compose {
    cmd: Vec<String>,
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

impl Compose {
    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(&self.cmd[0]);
        c.args(&self.cmd[1..]).args(["-p", &self.project]);
        for f in &self.files {
            c.arg("-f").arg(f);
        }
        c.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "compose {}: {}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_owned()
    }

    /// The container of a service (its first replica).
    fn container(&self, service: &str) -> Container {
        let id = self.ok(&["ps", "-q", service]);
        Container {
            name: id.lines().next().unwrap().to_owned(),
        }
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}

/// `deploy/compose` copied into `dir` as a user has it, plus their files (name, content).
fn user_compose_dir(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let compose_dir = dir.join("compose");
    std::fs::create_dir_all(compose_dir.join("certs")).unwrap();
    for f in std::fs::read_dir(repo().join("deploy/compose")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), compose_dir.join(f.file_name())).unwrap();
    }
    for (name, content) in files {
        write_readable(&compose_dir.join(name), content);
    }
    compose_dir
}

/// Published on free loopback ports, not on this machine's 443 and 80.
fn loopback_publish() -> Vec<(String, String)> {
    vec![
        ("TRACKPROXY_HTTPS_PUBLISH".into(), "127.0.0.1:0".into()),
        ("TRACKPROXY_HTTP_PUBLISH".into(), "127.0.0.1:0".into()),
    ]
}

#[test]
fn compose_single_host_keeps_the_acme_cache_on_its_named_volume() {
    images();
    let dir = tempfile::tempdir().unwrap();
    let cfg = std::fs::read_to_string(acme_config(dir.path())).unwrap();
    let compose_dir = user_compose_dir(dir.path(), &[("trackproxy.toml", &cfg)]);
    let override_file = compose_dir.join("docker-compose.test.yml");
    write_readable(
        &override_file,
        &format!("services:\n  trackproxy:\n    image: {IMAGE}\n"),
    );
    let compose = Compose {
        cmd: compose_command(),
        project: unique("single").replace('-', ""),
        files: vec![compose_dir.join("docker-compose.yml"), override_file],
        env: loopback_publish(),
    };
    compose.ok(&["up", "-d", "--no-build"]);
    let c = compose.container("trackproxy");
    let written = poll(Duration::from_secs(30), || {
        assert!(
            c.running() && c.inspect("{{.RestartCount}}") == "0",
            "trackproxy does not stay up: {:?}",
            c.logs()
        );
        backoff_written(&state_files(&c)).then_some(())
    });
    assert!(
        written.is_some(),
        "nothing written to the volume: {:?}",
        c.logs()
    );
    c.wait_healthy();
    // The volume is the compose file's named one, and outlives the container.
    let mounts = c.inspect("{{range .Mounts}}{{.Type}} {{.Name}} {{.Destination}};{{end}}");
    assert!(
        mounts.contains(&format!(
            "volume {}_acme /var/lib/trackproxy;",
            compose.project
        )),
        "{mounts}"
    );
}

/// A CA and a leaf for `host`: (ca PEM, chain PEM, key PEM).
fn certificates(host: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "trackproxy container test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca.clone().self_signed(&ca_key).unwrap().pem();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    (
        ca_pem.clone(),
        format!("{}{ca_pem}", leaf.pem()),
        key.serialize_pem(),
    )
}

/// Lines of `docker logs` after the last "trackproxy listening" (the current run of a
/// restarted container), and before it.
fn split_at_last_start(
    lines: &[serde_json::Value],
) -> (&[serde_json::Value], &[serde_json::Value]) {
    let last = lines
        .iter()
        .rposition(|l| l["message"] == "trackproxy listening")
        .unwrap_or(0);
    lines.split_at(last)
}

#[test]
fn compose_haproxy_two_replicas_rolling_restart_loses_no_request() {
    images();
    const HOST: &str = "url1234.example.test";
    let dir = tempfile::tempdir().unwrap();
    // deploy/compose as a user has it, plus their trackproxy.toml and certificates.
    let (ca, chain, key) = certificates(HOST);
    let toml = format!(
        "[upstream]\nurl = \"http://esp:8080\"\n\n[[hosts]]\nname = \"{HOST}\"\n\n\
             [[tls.certificates]]\ncert = \"/etc/trackproxy/certs/tls.crt\"\n\
             key = \"/etc/trackproxy/certs/tls.key\"\n\n\
             # one load generator sends everything: no per-client limit\n\
             [limits]\nper_client_rps = 0\nper_client_connections = 0\n"
    );
    let compose_dir = user_compose_dir(
        dir.path(),
        &[
            ("certs/ca.pem", &ca),
            ("certs/tls.crt", &chain),
            ("certs/tls.key", &key),
            ("trackproxy.toml", &toml),
        ],
    );
    // The local override: stand-in images for the public ones (no registry here), and the
    // stand-in ESP the configuration forwards to.
    let override_file = compose_dir.join("docker-compose.test.yml");
    write_readable(
        &override_file,
        &format!(
            "services:\n\
             \x20 haproxy:\n    image: {HAPROXY}\n\
             \x20 trackproxy-a:\n    image: {IMAGE}\n\
             \x20 trackproxy-b:\n    image: {IMAGE}\n\
             \x20 esp:\n    image: {TOOLS}\n    command: [\"python3\", \"-u\", \"/esp.py\"]\n\
             \x20   volumes:\n      - {}:/esp.py:ro\n",
            repo().join("tests/container/esp.py").display()
        ),
    );
    let project = unique("compose").replace('-', "");
    let compose = Compose {
        cmd: compose_command(),
        project: project.clone(),
        files: vec![
            compose_dir.join("docker-compose.haproxy.yml"),
            override_file.clone(),
        ],
        env: loopback_publish(),
    };
    compose.ok(&["up", "-d", "--no-build"]);
    let a = compose.container("trackproxy-a");
    let b = compose.container("trackproxy-b");
    let haproxy = compose.container("haproxy");
    let esp = compose.container("esp");
    a.wait_healthy();
    b.wait_healthy();
    // HAProxy puts a server in rotation after 2 good /readyz checks, 1 s apart.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        haproxy.running() && haproxy.inspect("{{.RestartCount}}") == "0",
        "HAProxy does not stay up: {:?}",
        haproxy.logs()
    );

    // The load generator in a container of its own on the project's network, so HAProxy sees
    // its address: 8 threads, a new TLS connection per request, 24 s or 20 000 requests.
    let network = format!("{project}_default");
    let certs = compose_dir.join("certs/ca.pem");
    let loadgen = Container::run(
        "loadgen",
        &[
            "--network",
            &network,
            "-v",
            &format!("{}:/ca.pem:ro", certs.display()),
            "-v",
            &format!(
                "{}:/loadgen.py:ro",
                repo().join("tests/container/loadgen.py").display()
            ),
        ],
        &[
            TOOLS,
            "python3",
            "-u",
            "/loadgen.py",
            "haproxy",
            "443",
            HOST,
            "/ca.pem",
            "24",
            "20000",
            "8",
        ],
    );
    // its address, while it runs (an exited container has none)
    let client_ip = loadgen.ip();
    assert!(!client_ip.is_empty());
    std::thread::sleep(Duration::from_secs(5));
    // The rolling restart of one replica: SIGTERM, drain, exit, start again.
    let restart = Instant::now();
    compose.ok(&["restart", "trackproxy-a"]);
    let restart_took = restart.elapsed();
    a.wait_healthy();

    assert_eq!(
        loadgen.exit_code(Duration::from_secs(60)),
        0,
        "{:?}",
        loadgen.logs()
    );
    let (out, _) = loadgen.logs();
    let summary: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap();
    let ok = summary["ok"].as_u64().unwrap() as usize;

    // Access-log lines reach stdout in batches (up to 100 ms late): wait until every answered
    // request has its line, or 10 s.
    let _ = poll(Duration::from_secs(10), || {
        let logged = access_lines(&json_lines(&a.logs().0)).len()
            + access_lines(&json_lines(&b.logs().0)).len();
        (logged >= ok).then_some(())
    });
    let a_lines = json_lines(&a.logs().0);
    let (a_before, a_after) = split_at_last_start(&a_lines);
    let b_lines = json_lines(&b.logs().0);
    let (a_old, a_new, b_served) = (
        access_lines(a_before),
        access_lines(a_after),
        access_lines(&b_lines),
    );
    eprintln!(
        "compose rolling restart: {summary}; restart took {restart_took:?}; old a served {}, new \
         a {}, b {}",
        a_old.len(),
        a_new.len(),
        b_served.len()
    );
    assert_eq!(summary["failed"], 0, "failed requests: {summary}");
    assert!(
        ok >= 2000,
        "only {ok} requests: too light a load to show anything"
    );
    assert!(
        !a_old.is_empty() && !b_served.is_empty(),
        "both replicas served before the restart"
    );
    assert!(
        !a_new.is_empty(),
        "the restarted replica got no traffic back"
    );
    let all: Vec<_> = a_old.iter().chain(&a_new).chain(&b_served).collect();
    assert_eq!(all.len(), ok, "every request logged once, by one replica");

    // The client address of every access-log line is the load generator's (PROXY v2 from
    // HAProxy), never HAProxy's; the ESP got it in X-Forwarded-For.
    let haproxy_ip = haproxy.ip();
    assert_ne!(client_ip, haproxy_ip);
    for l in &all {
        assert_eq!(l["client"], client_ip.as_str(), "{l}");
        assert_eq!(l["status"], 200, "{l}");
    }
    let seen = esp_records(&esp);
    assert_eq!(seen.len(), ok);
    assert!(
        seen.iter()
            .all(|r| r["x_forwarded_for"] == client_ip.as_str())
    );
}
