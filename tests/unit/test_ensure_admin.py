"""``manage.py ensure_admin`` (what ``make run`` calls): an admin on a fresh database, never a reset one."""
from io import StringIO

from django.contrib.auth import get_user_model
from django.core.management import call_command
from rest_framework.authtoken.models import Token


def ensure_admin(*args: str) -> str:
    out = StringIO()
    call_command("ensure_admin", *args, stdout=out)
    return out.getvalue().strip()


def test_a_fresh_database_gets_an_admin_with_the_default_password_and_a_token(db):
    line = ensure_admin()

    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password("admin")
    assert line == f"admin user created: username=admin password=admin api-token={Token.objects.get(user=admin).key}"


def test_an_existing_admins_password_is_kept_and_the_line_says_so(db):
    ensure_admin()
    admin = get_user_model().objects.get(username="admin")
    admin.set_password("changed-by-its-owner")
    admin.save()

    line = ensure_admin()

    assert get_user_model().objects.get(username="admin").check_password("changed-by-its-owner")
    assert "password=" not in line and "password unchanged" in line
    assert line.endswith(f"api-token={Token.objects.get(user=admin).key}")


def test_a_reset_happens_only_when_asked_for(db):
    ensure_admin()
    admin = get_user_model().objects.get(username="admin")
    admin.set_password("forgotten")
    admin.save()

    line = ensure_admin("--reset-password")

    assert get_user_model().objects.get(username="admin").check_password("admin")
    assert line.startswith("admin user reset: username=admin password=admin ")
