"""The guide's examples are tests: the site builds without a warning, and what README.md and docs/ tell
a reader to type works as written.

Every fenced block of README.md and docs/*.md is read:

- ```sh blocks run line by line in one *session* per page (shell variables carry from block to block):
  ``curl`` goes to the API through DRF's APIClient on the test database, ``manage.py`` commands run
  through ``call_command``, ``make`` targets and ``scripts/`` must exist, ``.venv/bin`` programs must be
  installed (and the test files a ``pytest`` line names must exist). ``NAME=value`` sets a variable,
  ``NAME=$(curl ... | jq -r .field)`` sets it from an answer, ``NAME=$(... manage.py ... --json | jq -r
  '.[0].field')`` from what a command prints (the filter: a path of ``.field`` and ``.[N]``; ``jq -c``
  keeps JSON). ``curl ... | jq FILTER`` runs the curl and leaves the filter unchecked. A
  ``manage.py`` line ending in ``# exits N`` must be refused with exit status N. A line this test does
  not know fails it. A session starts as the REST API page leaves a reader: ``API`` and ``TOKEN`` (the
  admin's) are set, on a database holding what ``make run`` creates (its admin, the demo's reference
  rows, the demo's approver and operator).
  Between lines, the engine's messages are delivered in this process, as a worker would.
- ```python blocks are executed, one namespace per page, on the test database (sagas a block
  registers are forgotten afterwards); the sagas they start are then run in-process to their end, and
  the README's first saga must succeed.
- A curl line ending in ``# NNN`` must answer NNN; any other must answer below 400. Its comment's
  ``"key": "value"`` pairs must be in the answer.

Two markers, an HTML comment on the line before a block (GitHub and the site do not show it):

- ``<!-- docs-test: skip: why -->``: not run (it needs docker, a running worker, a secret ...); its
  ``manage.py`` lines are still parsed by their command (the command exists, its options too);
- ``<!-- docs-test: fragment -->``: a python block that is part of a bigger program: only compiled.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command, get_commands, load_command_class
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from corporate import demo
from sagas import bulk
from sagas.definitions import registry
from sagas.engine import child_ended
from sagas.models import BulkAction, BulkActionStatus, SagaInstance, SagaStatus
from tests.interleaving import Ledger, deliver

ROOT = Path(settings.BASE_DIR)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|fragment)\b:?\s*(.*?)\s*-->\s*$")
SERVER = "http://127.0.0.1:8000"
PROGRAMS = {"celery", "uvicorn", "gunicorn", "pytest", "mkdocs", "python", "pip"}


@dataclass
class Block:
    page: Path
    line: int
    language: str
    text: str
    marker: str = ""  # "", "skip" or "fragment"
    why: str = ""

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marked = MARKER.search(before)
        found.append(Block(page, line, match.group(1), match.group(2),
                           marked.group(1) if marked else "", marked.group(2) if marked else ""))
    return found


# --- the site ----------------------------------------------------------------------------------------


def test_the_site_builds_strictly_without_a_warning(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "run-page.png").exists()  # the screenshots travel with the pages


def test_every_page_of_docs_is_in_the_sites_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert [p.name for p in PAGES[1:] if p.name not in nav] == []


def test_the_readme_stays_a_newcomers_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert "make run" in readme and "make test" in readme
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.(?:md|png))\)", readme):  # its links into the guide
        assert (ROOT / target).exists(), target
    assert re.findall(r"\]\(docs/[\w-]+\.md\)", readme)


def test_every_marker_says_why_and_marks_a_block():
    for page in PAGES:
        lines = page.read_text().splitlines()
        for n, line in enumerate(lines):
            marked = MARKER.search(line)
            if not marked:
                continue
            assert n + 1 < len(lines) and lines[n + 1].startswith("```"), f"{page.name}:{n + 1}: marks no block"
            if marked.group(1) == "skip":
                assert marked.group(2), f"{page.name}:{n + 1}: a skip must say why"


def test_the_make_targets_and_ci_call_the_readmes_commands():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:\n\tbash scripts/test.sh$", makefile, re.M)
    assert re.search(r"^run:\n\tbash scripts/run.sh$", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


# --- sh blocks -----------------------------------------------------------------------------------------


def split_comment(line: str) -> tuple[str, str]:
    """``line`` cut where the shell's comment starts (a ``#`` outside quotes, after a blank or first)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i:]
    return line.strip(), ""


def commands(text: str) -> list[tuple[str, str]]:
    """(command, comment) for each command of a sh block: continuations joined, comments split off."""
    out, pending = [], ""
    for raw in text.splitlines():
        line, comment = split_comment(raw)
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        try:
            shlex.split(pending)
        except ValueError:  # a quote still open: the command goes on on the next line
            continue
        if pending:
            out.append((pending, comment))
        pending = ""
    assert not pending, f"unterminated command: {pending!r}"
    return out


@dataclass
class Session:
    """A reader's terminal: shell variables, and the in-process worker behind the API."""

    sent: list
    bulk: list
    variables: dict = field(default_factory=dict)

    def expand(self, text: str) -> str:
        def value(match):
            name = match.group(1) or match.group(2)
            assert name in self.variables, f"${name} is used before it is set"
            return self.variables[name]
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)

    def run(self, command: str, comment: str) -> None:
        if command.startswith("export "):
            command = command[len("export "):]
        assigned = re.fullmatch(r"(\w+)=\$\((.*?)\|\s*jq -([rc]) (['\"]?)((?:\.\[\d+\]|\.\w+)+)\4\)", command, re.S)
        if assigned:
            name, program, style, _, path = assigned.groups()
            words = shlex.split(self.expand(program))
            if words[0] == "curl":
                answer = self.curl(words, "").json()
            else:
                assert "manage.py" in words, f"{program}: only curl and manage.py answers are read here"
                answer = json.loads(self.manage(words[words.index("manage.py") + 1:], ""))
            for step in re.findall(r"\.\[(\d+)\]|\.(\w+)", path):
                answer = answer[int(step[0])] if step[0] else answer[step[1]]
            self.variables[name] = (json.dumps(answer, separators=(",", ":"))
                                    if style == "c" or not isinstance(answer, str) else answer)
            return
        words = shlex.split(command)
        if "|" in words:  # a curl piped to jq: the answer is checked, what jq makes of it is not
            assert words[0] == "curl" and words[words.index("|") + 1] == "jq", f"{command!r}: only curl ... | jq"
            words = words[:words.index("|")]
            command = shlex.join(words)
        if re.fullmatch(r"\w+=\S*", command) and len(words) == 1:
            name, _, text = words[0].partition("=")
            self.variables[name] = self.expand(text)
            return
        while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value before a program: its environment
            words = words[1:]
        words = shlex.split(self.expand(shlex.join(words)))
        program = words[0]
        if program == "curl":
            self.curl(words, comment)
        elif "manage.py" in words:
            self.manage(words[words.index("manage.py") + 1:], comment)
        elif program == "make":
            makefile = (ROOT / "Makefile").read_text()
            for target in words[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"make {target}: no such target"
        elif program in ("bash", "sudo") or program.startswith("scripts/"):
            script = next(w for w in words if w.startswith("scripts/"))
            assert (ROOT / script).is_file(), f"{script} does not exist"
        elif program.startswith(".venv/bin/") and Path(program).name in PROGRAMS:
            assert (ROOT / program).exists(), f"{program} is not installed"
            if Path(program).name == "pytest":
                for path in (w.split("::")[0] for w in words[1:] if w.startswith("tests/")):
                    assert (ROOT / path).exists(), f"{path} does not exist"
        else:
            raise AssertionError(f"a command this test does not know: {command!r} "
                                 "(mark its block <!-- docs-test: skip: why -->)")

    def manage(self, args: list[str], comment: str) -> str:
        """What the command prints; a refusal fails the test unless the comment says ``# exits N``."""
        out = StringIO()
        refused = re.match(r"#\s*exits (\d+)\b", comment)
        if refused:
            with pytest.raises(CommandError) as caught:
                call_command(*args, stdout=out, stderr=StringIO())
            assert caught.value.returncode == int(refused.group(1)), (args, caught.value.returncode, caught.value)
        else:
            call_command(*args, stdout=out, stderr=StringIO())
        self.work()
        return out.getvalue()

    def curl(self, words: list[str], comment: str):
        method, headers, data, path = None, {}, None, None
        words = iter(words[1:])
        for word in words:
            if word == "-X":
                method = next(words)
            elif word == "-H":
                name, _, value = next(words).partition(":")
                headers[name.strip().lower()] = value.strip()
            elif word in ("-d", "--data"):
                data = next(words)
            elif word.startswith("-"):
                assert set(word[1:]) <= set("sif"), f"curl option {word} is not understood here"
            else:
                path = word
        assert path and path.startswith(SERVER), f"curl {path}: not the server make run starts"
        method = method or ("POST" if data is not None else "GET")
        extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items() if k != "content-type"}
        answer = APIClient().generic(method, path[len(SERVER):], data or "",
                                     content_type=headers.get("content-type", "application/json"), **extra)
        wanted = re.match(r"#\s*(\d{3})\b", comment)
        if wanted:
            assert answer.status_code == int(wanted.group(1)), (path, answer.status_code, answer.content)
        else:
            assert answer.status_code < 400, (path, answer.status_code, answer.content)
        for key, value in re.findall(r'"(\w+)": "([^"]*)"', comment):  # the answer the comment shows
            assert answer.json()[key] == value, (path, key, answer.json()[key])
        self.work()
        return answer

    def work(self) -> None:
        """Deliver what the engine sent (and what that sends), as a worker would."""
        for _ in range(100):
            if self.bulk:
                job = self.bulk.pop(0)
                if BulkAction.objects.get(pk=job).status != BulkActionStatus.DONE:
                    bulk.run_batch(job)
                continue
            if not self.sent:
                return
            saga = SagaInstance.objects.get(pk=self.sent[0][1])
            if self.sent[0][0] == "child_ended":
                _, parent, child = self.sent.pop(0)
                child_ended(parent, child)
                continue
            deliver(self.sent, saga.pk, registry.get(saga.saga_type, saga.version), Ledger())
        raise AssertionError("the engine keeps sending")


def parses(block: Block, command: str) -> None:
    """A manage.py line of a block that is not run: its command exists and takes those arguments."""
    words = shlex.split(command)
    if "|" in words:  # what a command's output goes on to is not checked here
        words = words[:words.index("|")]
    if "manage.py" not in words:
        return
    name, *args = words[words.index("manage.py") + 1:]
    try:
        load_command_class(get_commands()[name], name).create_parser("manage.py", name).parse_args(args)
    except (KeyError, CommandError) as exc:
        raise AssertionError(f"{block}: {command}\n{exc!r}") from exc


@pytest.fixture
def session(transactional_db, sent, monkeypatch):
    """A session on a database as make run leaves it (its admin, the demo's rows), ids counted from 1."""
    jobs: list = []
    monkeypatch.setattr(bulk, "send_after_commit", jobs.append)
    call_command("ensure_admin", stdout=StringIO())
    demo.ensure_reference_data()
    demo.ensure_services(2)
    demo.ensure_capacity(demo.ensure_reference_data(), [])
    demo.approver_user(), demo.operator_user()  # make run's saga_demo leaves them; the guide acts as them
    admin = get_user_model().objects.get(username="admin")
    return lambda: Session(sent, jobs, {"API": f"{SERVER}/api",
                                        "TOKEN": Token.objects.get_or_create(user=admin)[0].key})


@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_every_sh_block_of_the_readme_and_the_guide_works_as_written(session):
    ran = 0
    for page in PAGES:
        terminal = session()
        for block in blocks(page):
            if block.language != "sh":
                continue
            if block.marker == "skip":
                for command, _ in commands(block.text):
                    parses(block, command)
                continue
            for command, comment in commands(block.text):
                try:
                    terminal.run(command, comment)
                except Exception as exc:
                    raise AssertionError(f"{block}: {command}\n{exc!r}") from exc
                ran += 1
    assert ran > 40


def test_the_readmes_token_lines_answer_the_admins_token(db):
    """make run's admin (ensure_admin) gets its token from the README's lines, both ways."""
    call_command("ensure_admin", stdout=StringIO())
    lines = [c for b in blocks(PAGES[0]) if b.language == "sh" for c, _ in commands(b.text)]
    token = [line for line in lines if "/auth/token/" in line]
    created = [line for line in lines if "drf_create_token" in line]
    assert token and created
    session = Session([], [], {"API": f"{SERVER}/api"})
    for line in token:
        session.run(line, "")
    assert session.variables["TOKEN"] == Token.objects.get(user__username="admin").key
    for line in created:
        out = StringIO()
        words = shlex.split(line)
        call_command(*words[words.index("manage.py") + 1:], stdout=out)
        assert session.variables["TOKEN"] in out.getvalue()


# --- python blocks -------------------------------------------------------------------------------------


@pytest.fixture
def forgetting_registrations():
    known = {s.key for s in registry}
    yield
    for saga in list(registry):
        if saga.key not in known:
            registry.unregister(saga.name, saga.version)


def test_every_python_block_runs_or_at_least_compiles(db, sent, forgetting_registrations,
                                                      django_capture_on_commit_callbacks):
    """Each block runs as a program would (what it commits is sent), and a worker then runs the sagas it
    started: each ends as the engine decides, none failed."""
    call_command("ensure_admin", stdout=StringIO())
    demo.ensure_reference_data()
    worker = Session(sent, [])
    ran = 0
    for page in PAGES:
        namespace: dict = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
        for block in blocks(page):
            if block.language != "python" or block.marker == "skip":
                continue
            code = compile(block.text, str(block), "exec")
            if block.marker == "fragment":
                continue
            try:
                with django_capture_on_commit_callbacks(execute=True):
                    exec(code, namespace)
                while sent:
                    with django_capture_on_commit_callbacks(execute=True):
                        worker.work()
            except Exception as exc:
                raise AssertionError(f"{block}: {exc!r}") from exc
            ran += 1
    assert ran >= 5
    started = dict(SagaInstance.objects.values_list("saga_type", "status"))
    assert started["hotel.stay"] == SagaStatus.SUCCEEDED  # the README's first saga, run to its end
    assert started["travel.booking"] == SagaStatus.COMPENSATED  # started, then cancelled
    assert SagaStatus.FAILED not in started.values()
