"""Settings read from the environment: production refuses weak secrets and passes Django's deploy checks.

Settings are read once, at import, so each case runs ``manage.py`` (or
imports ``config.settings``) in a fresh process with its own environment.
"""
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import yaml
from django.conf import settings

# Variables these tests set themselves: anything the calling shell exported is dropped.
OURS = ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD",
        "SECURE_PROXY_SSL_HEADER", "DJANGO_SETTINGS_MODULE")
PRODUCTION = {"DEBUG": "0", "ALLOWED_HOSTS": "sagas.example.com"}


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in OURS}
    return subprocess.run([sys.executable, *args], cwd=settings.BASE_DIR, capture_output=True, text=True,
                          env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings", **env}, timeout=60)


def settings_of(names: list[str], **env: str) -> dict:
    """The named settings as ``config.settings`` computes them under ``env``."""
    code = ("import json, config.settings as s; "
            f"print(json.dumps({{n: getattr(s, n) for n in {names!r}}}))")
    done = run(["-c", code], **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_deploy_check_is_clean_with_debug_off_and_a_strong_key():
    done = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
               SECRET_KEY=secrets.token_urlsafe(50), **PRODUCTION)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_debug_off_refuses_the_development_key():
    done = run(["manage.py", "check"], SECRET_KEY=settings.DEV_SECRET_KEY, **PRODUCTION)

    assert done.returncode != 0
    assert "SECRET_KEY is the development key" in done.stderr


def test_debug_off_refuses_a_missing_or_short_key():
    missing = run(["manage.py", "check"], **PRODUCTION)
    short = run(["manage.py", "check"], SECRET_KEY="x" * 10 + "abcdefghij", **PRODUCTION)

    assert missing.returncode != 0 and "SECRET_KEY is not set" in missing.stderr
    assert short.returncode != 0 and "SECRET_KEY is too weak (20 characters" in short.stderr


def test_debug_off_defaults_to_https_only():
    values = settings_of(["SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
                          "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD",
                          "SECURE_PROXY_SSL_HEADER"],
                         SECRET_KEY=secrets.token_urlsafe(50), **PRODUCTION)

    assert values == {"SECURE_SSL_REDIRECT": True, "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True,
                      "SECURE_HSTS_SECONDS": 31536000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
                      "SECURE_HSTS_PRELOAD": True, "SECURE_PROXY_SSL_HEADER": None}


def test_debug_is_off_unless_set():
    unset = run(["manage.py", "check"])
    values = settings_of(["DEBUG", "ALLOWED_HOSTS", "SAGAS_FAILURE_INJECTION_ENABLED"],
                         SECRET_KEY=secrets.token_urlsafe(50))

    assert unset.returncode != 0 and "SECRET_KEY is not set" in unset.stderr  # no development key
    assert values == {"DEBUG": False, "ALLOWED_HOSTS": [], "SAGAS_FAILURE_INJECTION_ENABLED": False}


def test_debug_on_keeps_plain_http_and_the_development_key():
    values = settings_of(["SECRET_KEY", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "SECURE_HSTS_SECONDS"],
                         DEBUG="1")

    assert values == {"SECRET_KEY": settings.DEV_SECRET_KEY, "SECURE_SSL_REDIRECT": False,
                      "SESSION_COOKIE_SECURE": False, "SECURE_HSTS_SECONDS": 0}


def test_each_https_setting_can_be_overridden_and_a_proxy_header_named():
    values = settings_of(["SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_PROXY_SSL_HEADER"],
                         SECRET_KEY=secrets.token_urlsafe(50), SECURE_SSL_REDIRECT="0", SECURE_HSTS_SECONDS="300",
                         SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto=https", **PRODUCTION)

    assert values == {"SECURE_SSL_REDIRECT": False, "SECURE_HSTS_SECONDS": 300,
                      "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"]}


def test_a_malformed_proxy_header_is_refused_with_the_expected_form():
    done = run(["manage.py", "check"], DEBUG="1", SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")

    assert done.returncode != 0
    assert "X-Forwarded-Proto=https" in done.stderr


def compose_environment(**given: str) -> dict:
    """The web service's environment in ``docker-compose.yml``, each ``${NAME:-default}`` at its default
    (or ``given``), each required ``${NAME:?...}`` from ``given``."""
    compose = yaml.safe_load((Path(settings.BASE_DIR) / "docker-compose.yml").read_text())
    env = {}
    for name, value in compose["services"]["web"]["environment"].items():
        def resolve(match):
            variable, kind, default = match.groups()
            if variable in given:
                return given[variable]
            assert kind == ":-", f"{name}: {variable} is required; give it"
            return default

        env[name] = re.sub(r"\$\{(\w+)(:-|:\?)([^}]*)\}", resolve, str(value))
    return env


def deploy_warnings(env: dict) -> set[str]:
    done = run(["manage.py", "check", "--deploy"], **env)
    assert done.returncode == 0, done.stdout + done.stderr
    return set(re.findall(r"\((security\.W\d+)\)", done.stdout + done.stderr))


def test_deploy_check_with_the_compose_environment_warns_only_of_plain_http():
    env = compose_environment(SECRET_KEY=secrets.token_urlsafe(50))

    # The deployment checklist (docs/security.md) explains each: the stack serves plain HTTP on :8000.
    assert deploy_warnings(env) == {"security.W004", "security.W008", "security.W012", "security.W016"}


def test_deploy_check_with_the_compose_environment_behind_a_tls_proxy_is_clean():
    env = compose_environment(SECRET_KEY=secrets.token_urlsafe(50), SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto=https",
                              SECURE_SSL_REDIRECT="1", SESSION_COOKIE_SECURE="1", CSRF_COOKIE_SECURE="1",
                              SECURE_HSTS_SECONDS="31536000", SAGAS_NUM_PROXIES="1")

    assert deploy_warnings(env) == set()

def test_each_request_is_written_once_in_the_web_servers_log(tmp_path):
    """As make run serves the app (uvicorn, its access log on): a 404 is one line, not Django's warning too."""
    import urllib.error
    import urllib.request

    from sagas.workers import free_port, wait_for_http

    port, log = free_port(), tmp_path / "web.log"
    clean = {k: v for k, v in os.environ.items() if k not in OURS}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
             "--ws", "wsproto"], cwd=settings.BASE_DIR, stdout=out, stderr=subprocess.STDOUT,
            env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "1"})
    paths = ("/no-such-page/", "/api/no-such-endpoint/")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/schema/", proc, log)
        for path in paths:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
            except urllib.error.HTTPError as answer:
                assert answer.code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    text = log.read_text()
    for path in paths:
        assert text.count(path) == 1, text


def test_a_server_error_is_still_logged_with_its_traceback():
    import logging

    request_log = logging.getLogger("django.request")
    assert request_log.isEnabledFor(logging.ERROR) and not request_log.isEnabledFor(logging.WARNING)
    assert request_log.propagate  # to the console and to the mails to ADMINS
