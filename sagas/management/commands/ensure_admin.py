"""Make sure an admin user and its API token exist, and print them (``make run`` shows the line).

A user that exists keeps its password: ``make run`` is run again and again, and a password its
owner changed must not go back to the default. ``--reset-password`` sets it again.
"""
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = ("Create a superuser (default admin/admin) and its API token if missing, and print the credentials; "
            "an existing user keeps its password unless --reset-password.")

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", default="admin", help="for a new user, or with --reset-password")
        parser.add_argument("--reset-password", action="store_true",
                            help="set the password (and superuser rights) of an existing user again")

    def handle(self, *args, username: str, password: str, reset_password: bool, **options):
        user, created = get_user_model().objects.get_or_create(username=username)
        if created or reset_password:
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
        token, _ = Token.objects.get_or_create(user=user)
        if created or reset_password:
            verb = "created" if created else "reset"
            self.stdout.write(f"admin user {verb}: username={username} password={password} api-token={token.key}")
        else:
            self.stdout.write(f"admin user {username} exists, password unchanged (manage.py changepassword "
                              f"{username}, or ensure_admin --reset-password): username={username} "
                              f"api-token={token.key}")
