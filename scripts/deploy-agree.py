#!/usr/bin/env python3
"""Checks that the Dockerfile, deploy/compose and deploy/kubernetes agree where they share a
setting: the container ports, the probes, the user, the stop grace against drain + shutdown
grace, and the state volume's path. Run by scripts/lint-deploy; exits 1 naming each mismatch."""

import re
import sys
import tomllib

import yaml

problems = []


def check(what, ok, detail):
    if not ok:
        problems.append(f"{what}: {detail}")


def duration_s(s):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(s).strip())
    if not m:
        raise ValueError(f"unexpected duration {s!r}")
    n, unit = int(m[1]), m[2]
    return {"ms": n / 1000, "s": n, "m": n * 60}[unit]


dockerfile = open("Dockerfile").read()
compose = yaml.safe_load(open("deploy/compose/docker-compose.yml"))
compose_lb = yaml.safe_load(open("deploy/compose/docker-compose.haproxy.yml"))
haproxy = open("deploy/compose/haproxy.cfg").read()
deployment = yaml.safe_load(open("deploy/kubernetes/deployment.yaml"))
statefulset = yaml.safe_load(open("deploy/kubernetes/acme/statefulset.yaml"))
k8s_cfg = {
    name: tomllib.loads(yaml.safe_load(open(path))["data"]["trackproxy.toml"])
    for name, path in [
        ("deployment", "deploy/kubernetes/configmap.yaml"),
        ("statefulset", "deploy/kubernetes/acme/configmap.yaml"),
    ]
}

# The image's ports, user, health check, volume.
env = dict(re.findall(r"(TRACKPROXY__[A-Z_]+)=(\S+)", dockerfile))
image_https = int(env["TRACKPROXY__SERVER__HTTPS_LISTEN"].rsplit(":", 1)[1])
image_http = int(env["TRACKPROXY__SERVER__HTTP_LISTEN"].rsplit(":", 1)[1])
expose = {int(p) for p in re.search(r"^EXPOSE (.*)$", dockerfile, re.M)[1].split()}
check("Dockerfile EXPOSE", expose == {image_https, image_http}, f"{expose} vs the listeners")
user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
volume = re.search(r'^VOLUME \["([^"]+)"\]$', dockerfile, re.M)[1]
health_path = re.search(r'HEALTHCHECK.*\n?.*"--path", "([^"]+)"', dockerfile)[1]

admin_port = 9090
lb_env = compose_lb["services"]["trackproxy-a"]["environment"]
check(
    "compose admin listener",
    lb_env["TRACKPROXY__ADMIN__LISTEN"] == f"0.0.0.0:{admin_port}",
    lb_env["TRACKPROXY__ADMIN__LISTEN"],
)
# haproxy.cfg: servers on the image's ports, checks of /readyz on the admin port.
for port in (image_https, image_http):
    for s in ("a", "b"):
        check("haproxy.cfg", f"server {s} trackproxy-{s}:{port}" in haproxy, f"no server {s} on {port}")
check("haproxy.cfg", haproxy.count("option httpchk GET /readyz") == 2, "health checks not on /readyz")
check("haproxy.cfg", haproxy.count(f"check port {admin_port}") == 2, f"checks not on port {admin_port}")
for p in compose["services"]["trackproxy"]["ports"]:
    check("docker-compose.yml ports", int(p.split(":")[-1]) in (image_https, image_http), p)

for kind, doc in (("deployment", deployment), ("statefulset", statefulset)):
    spec = doc["spec"]["template"]["spec"]
    c = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(f"{kind} ports", ports == {"https": image_https, "http": image_http, "admin": admin_port}, ports)
    cfg = k8s_cfg[kind]
    check(f"{kind} config listeners",
          cfg["server"]["https_listen"].endswith(f":{image_https}")
          and cfg["server"]["http_listen"].endswith(f":{image_http}")
          and cfg["admin"]["listen"].endswith(f":{admin_port}"),
          cfg["server"])
    check(f"{kind} readinessProbe", c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"},
          c["readinessProbe"])
    check(f"{kind} livenessProbe", c["livenessProbe"]["httpGet"] == {"path": health_path, "port": "admin"},
          f"{c['livenessProbe']} vs the image's HEALTHCHECK {health_path}")
    sc = spec["securityContext"]
    check(f"{kind} user", (str(sc["runAsUser"]), str(sc["runAsGroup"])) == user.groups(), sc)
    # The kill timeout covers drain_delay + shutdown_grace, and is the compose files' too.
    grace = spec["terminationGracePeriodSeconds"]
    need = duration_s(cfg["server"].get("drain_delay", "0s")) + duration_s(cfg["server"].get("shutdown_grace", "30s"))
    check(f"{kind} terminationGracePeriodSeconds", grace > need, f"{grace} s, drain + grace {need} s")
    for name, f in (("docker-compose.yml", compose), ("docker-compose.haproxy.yml", compose_lb)):
        for svc_name, svc in f["services"].items():
            if svc_name.startswith("trackproxy"):
                check(f"{name} {svc_name} stop_grace_period", duration_s(svc["stop_grace_period"]) == grace,
                      f"{svc['stop_grace_period']} vs {kind}'s {grace} s")
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    if kind == "statefulset":
        check("statefulset state volume", volume in mounts, f"{mounts} vs VOLUME {volume}")
        check("statefulset cache_dir", cfg["tls"]["acme"]["cache_dir"].startswith(volume + "/"),
              cfg["tls"]["acme"]["cache_dir"])

lb_need = duration_s(lb_env["TRACKPROXY__SERVER__DRAIN_DELAY"]) + 30
check("docker-compose.haproxy.yml stop_grace_period",
      duration_s(compose_lb["services"]["trackproxy-a"]["stop_grace_period"]) > lb_need,
      f"not above drain_delay + the default shutdown_grace ({lb_need} s)")
vols = compose["services"]["trackproxy"]["volumes"]
check("docker-compose.yml state volume", f"acme:{volume}" in vols, f"{vols} vs VOLUME {volume}")

if problems:
    print("deploy/ and the Dockerfile disagree:", *problems, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print("Dockerfile, compose and Kubernetes agree on ports, probes, user, grace periods, volume path")
