"""Settings for the test suite and the workers it starts: the main settings plus
a test app with the sagas the tests drive, and a result backend so that tests
can wait on the tasks they send."""
from .settings import *  # noqa: F401,F403
from .settings import CELERY_BROKER_URL, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
# Redis stores results; with RabbitMQ as broker, results come back over RPC.
CELERY_RESULT_BACKEND = CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else "rpc://"
CELERY_TASK_IGNORE_RESULT = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
