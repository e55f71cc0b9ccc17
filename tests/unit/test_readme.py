"""What the README tells a newcomer to type works as written (for now: how to get an API token)."""
import json
import re
import shlex
from io import StringIO

from django.conf import settings
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

README = (settings.BASE_DIR / "README.md").read_text()


def commands(pattern: str) -> list[str]:
    """The README's shell lines matching ``pattern``, from its ```sh blocks."""
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    return [line for block in blocks for line in block.splitlines() if re.search(pattern, line)]


def test_the_readmes_drf_create_token_lines_work_after_make_run_created_its_admin(db):
    lines = commands(r"manage\.py drf_create_token")
    assert lines
    call_command("ensure_admin", stdout=StringIO())  # what make run does on a fresh database

    for line in lines:
        words = shlex.split(line.split("#")[0])
        out = StringIO()
        call_command(*words[words.index("manage.py") + 1:], stdout=out)  # CommandError for a missing user
        assert Token.objects.get(user__username=words[-1]).key in out.getvalue()


def test_the_readmes_token_request_gets_the_token(db):
    lines = commands(r"/auth/token/")
    assert lines
    call_command("ensure_admin", stdout=StringIO())

    for line in lines:
        words = shlex.split(line)
        path = words[words.index("POST") + 1].replace("$API", "/api")
        response = APIClient().post(path, json.loads(words[words.index("-d") + 1]), format="json")
        assert response.status_code == 200, response.content
        assert response.json()["token"] == Token.objects.get(user__username="admin").key
