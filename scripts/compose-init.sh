#!/bin/sh
# The compose stack's one-off start-up step (its `init` service): migrate, then the admin user.
# Safe to run again: migrate does nothing when up to date, and an admin user that exists is left
# as it is (its password is not reset: change it with `manage.py changepassword`).
set -eu
python manage.py migrate --noinput
if [ -z "${DJANGO_SUPERUSER_USERNAME:-}" ] || [ -z "${DJANGO_SUPERUSER_PASSWORD:-}" ]; then
    echo "init: DJANGO_SUPERUSER_USERNAME or DJANGO_SUPERUSER_PASSWORD not set: no admin user created"
    exit 0
fi
# Exit status 3: the user exists. The name is read from the environment inside Python, never pasted into code.
status=0
python manage.py shell -v 0 -c 'import os, sys
from django.contrib.auth import get_user_model
User = get_user_model()
sys.exit(3 if User._default_manager.filter(**{User.USERNAME_FIELD: os.environ["DJANGO_SUPERUSER_USERNAME"]}).exists() else 0)' || status=$?
case "$status" in
    0) python manage.py createsuperuser --noinput   # reads DJANGO_SUPERUSER_USERNAME, _PASSWORD, _EMAIL
       echo "init: admin user '$DJANGO_SUPERUSER_USERNAME' created" ;;
    3) echo "init: admin user '$DJANGO_SUPERUSER_USERNAME' exists: left as it is" ;;
    *) exit "$status" ;;
esac
