"""The compose stack for real: built, brought up, used through its published ports, brought down.

Runs only with SAGAS_COMPOSE_TEST=1 and a Docker engine with compose (`docker compose` or
`docker-compose`). With SAGAS_COMPOSE_OFFLINE=1 it first runs scripts/compose-offline.sh (base
images and a wheelhouse built on this machine) and uses deploy/offline.env, for a machine that
reaches no image registry. Builds are slow on a small machine: allow several minutes.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = os.environ.get("SAGAS_COMPOSE_OFFLINE") == "1"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("SAGAS_COMPOSE_TEST") != "1",
                       reason="brings the compose stack up: set SAGAS_COMPOSE_TEST=1 (and a Docker engine)"),
    pytest.mark.timeout(1800),
]

# Variables the stack reads that a developer's shell may hold: the test runs on the compose defaults.
INHERITED = ("ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "FLOWER_USER", "DJANGO_SUPERUSER_USERNAME",
             "POSTGRES_PASSWORD", "SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE",
             "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS")
# check --deploy on the stack's plain HTTP, as the guide's deployment checklist (docs/security.md) lists them.
PLAIN_HTTP_WARNINGS = {"security.W004", "security.W008", "security.W012", "security.W016"}


def compose_command() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("SAGAS_COMPOSE_TEST=1 but neither `docker compose` nor `docker-compose` is installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, *, method: str = "GET", headers: dict | None = None, body: dict | None = None,
         timeout: float = 10) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def wait_for(what: str, probe, *, timeout: float, every: float = 2.0):
    """probe() until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")


HEALTHCHECKED = ("postgres", "redis", "web", "worker", "flower")


@dataclass
class Stack:
    compose: list[str]
    env: dict
    web: str
    flower: str
    prometheus: str

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.compose, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def exec(self, service: str, *command: str, timeout: float = 120) -> str:
        return self.run("exec", "-T", service, *command, timeout=timeout).stdout

    def containers(self, service: str) -> list[str]:
        return self.run("ps", "-q", service).stdout.split()

    def inspect(self, container: str, template: str):
        out = subprocess.run(["docker", "inspect", "-f", template, container], capture_output=True, text=True,
                             check=True).stdout
        return json.loads(out)


def health(stack: Stack, service: str) -> list[str]:
    return [stack.inspect(c, "{{json .State.Health.Status}}") for c in stack.containers(service)]


def all_healthy(stack: Stack, service: str) -> bool:
    statuses = health(stack, service)
    return bool(statuses) and set(statuses) == {"healthy"}


@pytest.fixture(scope="module")
def stack():
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("SAGAS_COMPOSE_TEST=1 but no Docker engine answers (`docker info`)")
    compose = compose_command()
    if OFFLINE:
        subprocess.run(["bash", "scripts/compose-offline.sh"], cwd=ROOT, check=True, timeout=1200)
        compose += ["--env-file", "deploy/offline.env"]
    project = f"sagas-test-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    ports = {name: free_port() for name in ("WEB_PORT", "FLOWER_PORT", "PROMETHEUS_PORT")}
    env.update({
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FLOWER_PASSWORD": secrets.token_urlsafe(16),
        "DJANGO_SUPERUSER_PASSWORD": secrets.token_urlsafe(16),
        "SAGAS_METRICS_TOKEN": secrets.token_urlsafe(24),
        **{name: str(port) for name, port in ports.items()},
    })
    s = Stack(compose=[*compose, "-p", project, "--profile", "monitoring"], env=env,
              web=f"http://127.0.0.1:{ports['WEB_PORT']}",
              flower=f"http://127.0.0.1:{ports['FLOWER_PORT']}",
              prometheus=f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}")
    started = time.monotonic()
    try:
        s.run("up", "-d", "--build", "--scale", "worker=2", timeout=1200)
        print(f"\ncompose: {project} up in {time.monotonic() - started:.0f} s ({' '.join(compose)})")
        for service in HEALTHCHECKED:
            wait_for(f"{service} healthy", lambda: all_healthy(s, service), timeout=240, every=5)
        print(f"compose: every healthcheck passing {time.monotonic() - started:.0f} s after the start")
        yield s
    finally:
        ps = s.run("ps", check=False).stdout
        print(f"compose: {project} at the end:\n{ps}")
        s.run("down", "-v", "--remove-orphans", timeout=300, check=False)


def test_web_worker_and_flower_healthchecks_pass(stack):
    for service in HEALTHCHECKED:
        statuses = health(stack, service)
        print(f"health: {service} {statuses}")
        assert statuses and set(statuses) == {"healthy"}, (service, statuses)


def test_admin_user_step_creates_the_user_once(stack):
    first = stack.run("logs", "--no-color", "init").stdout
    assert "init: admin user 'admin' created" in first
    again = stack.run("run", "--rm", "-T", "init", timeout=300).stdout
    assert "init: admin user 'admin' exists: left as it is" in again
    status, _, body = http(f"{stack.web}/admin/login/")
    assert status == 200, body[:300]


def test_saga_started_through_web_finishes_on_a_worker_container(stack):
    token = stack.exec("web", "python", "manage.py", "drf_create_token", "admin").split()[2]
    auth = {"Authorization": f"Token {token}"}
    order = json.loads(stack.exec("web", "python", "manage.py", "shell", "-v", "0", "-c",
                                  "import json; from corporate.fixtures import Inputs; "
                                  "print(json.dumps(Inputs.order()))").strip().splitlines()[-1])
    status, headers, body = http(f"{stack.web}/api/sagas/", method="POST", headers=auth,
                                 body={"saga_type": "corporate.order_fulfillment", "input": order})
    assert status == 202, body[:500]
    saga = json.loads(body)
    assert headers["Location"].endswith(f"/api/sagas/{saga['id']}/")

    def finished():
        s = json.loads(http(f"{stack.web}/api/sagas/{saga['id']}/", headers=auth)[2])
        return s if s["status"] not in ("pending", "running") else None

    final = wait_for("the saga finished", finished, timeout=120)
    assert final["status"] == "succeeded", final
    assert [step["status"] for step in final["steps"]] == ["succeeded"] * 4

    # Flower (basic auth) saw every step's task run on one of the worker containers.
    workers = {f"celery@{stack.inspect(c, '{{json .Config.Hostname}}')}" for c in stack.containers("worker")}
    flower_auth = basic("admin", stack.env["FLOWER_PASSWORD"])

    def step_tasks():
        tasks = json.loads(http(f"{stack.flower}/api/tasks?taskname=sagas.run_step", headers=flower_auth)[2])
        mine = [t for t in tasks.values() if saga["id"] in (t.get("args") or "")]
        return mine if len(mine) == 4 and all(t["state"] == "SUCCESS" for t in mine) else None

    tasks = wait_for("Flower shows the saga's four steps done", step_tasks, timeout=60)
    assert {t["worker"] for t in tasks} <= workers, (tasks, workers)
    took = datetime.fromisoformat(final["finished_at"]) - datetime.fromisoformat(final["started_at"])
    print(f"saga: {saga['id']} {final['status']} in {took.total_seconds():.3f} s, "
          f"its steps run on {sorted({t['worker'] for t in tasks})} of {sorted(workers)}")


def scrape_jobs() -> dict:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_prometheus_scrapes_web_and_flower_with_their_credentials(stack):
    jobs = scrape_jobs()
    assert set(jobs) == {"sagas", "flower"}

    def targets():
        data = json.loads(http(f"{stack.prometheus}/api/v1/targets")[2])["data"]["activeTargets"]
        up = {t["labels"]["job"]: t for t in data}
        return up if set(up) == set(jobs) and all(t["health"] == "up" for t in up.values()) else None

    up = wait_for("Prometheus has scraped both targets", targets, timeout=120, every=5)
    for job, target in sorted(up.items()):
        print(f"prometheus: {job} {target['scrapeUrl']} {target['health']} {target['lastError']!r}")
        assert target["lastError"] == ""


def test_scrape_endpoints_answer_the_requests_prometheus_sends(stack):
    """From inside the stack's network, with the host names, paths and credentials of prometheus.yml."""
    jobs = scrape_jobs()
    web_job, flower_job = jobs["sagas"], jobs["flower"]
    probe = ("import sys, urllib.request as u, urllib.error as e\n"
             "r = u.Request(sys.argv[1], headers={'Authorization': sys.argv[2]} if sys.argv[2] else {})\n"
             "try: x = u.urlopen(r, timeout=10); print(x.status, x.read().decode()[:200000])\n"
             "except e.HTTPError as err: print(err.code)\n")

    def scrape(job: dict, authorization: str) -> tuple[int, str]:
        url = f"http://{job['static_configs'][0]['targets'][0]}{job['metrics_path']}"
        out = stack.exec("web", "python", "-c", probe, url, authorization)
        status, _, text = out.partition(" ")
        return int(status.strip()), text

    assert web_job["authorization"]["type"] == "Bearer"
    status, text = scrape(web_job, f"Bearer {stack.env['SAGAS_METRICS_TOKEN']}")
    assert status == 200 and "# TYPE sagas_started_total counter" in text, text[:300]
    assert scrape(web_job, "")[0] == 401
    assert scrape(web_job, "Bearer wrong")[0] == 401

    user = flower_job["basic_auth"]["username"]
    flower_header = basic(user, stack.env["FLOWER_PASSWORD"])["Authorization"]
    status, text = scrape(flower_job, flower_header)
    assert status == 200 and "flower_events_total" in text, text[:300]
    print(f"scrape: http://web:8000/metrics 200 with the bearer token, 401 without; "
          f"http://flower:5555/metrics 200 with {user}'s basic auth")


def test_flower_wants_its_password_and_keeps_it_off_the_command_line(stack):
    assert http(f"{stack.flower}/api/workers")[0] == 401
    assert http(f"{stack.flower}/api/workers", headers=basic("admin", "wrong"))[0] == 401
    assert http(f"{stack.flower}/api/workers", headers=basic("admin", stack.env["FLOWER_PASSWORD"]))[0] == 200
    (flower,) = stack.containers("flower")
    assert stack.env["FLOWER_PASSWORD"] not in " ".join(stack.inspect(flower, "{{json .Config.Cmd}}"))


def test_only_web_flower_and_prometheus_are_published_and_on_loopback_only(stack):
    published = {}
    for service in ("postgres", "redis", "web", "worker", "beat", "flower", "prometheus"):
        for container in stack.containers(service):
            ports = stack.inspect(container, "{{json .NetworkSettings.Ports}}") or {}
            bindings = [b for bs in ports.values() if bs for b in bs]
            if bindings:
                published[service] = {b["HostIp"] for b in bindings}
    assert published == {"web": {"127.0.0.1"}, "flower": {"127.0.0.1"}, "prometheus": {"127.0.0.1"}}


def test_check_deploy_in_web_leaves_only_the_plain_http_warnings(stack):
    done = stack.run("exec", "-T", "-e", "DJANGO_SETTINGS_MODULE=config.settings", "web",
                     "python", "manage.py", "check", "--deploy")
    report = done.stdout + done.stderr
    found = {word.strip("():") for word in report.split() if word.startswith("(security.")}
    print("check --deploy:", sorted(found))
    assert found == PLAIN_HTTP_WARNINGS, report
