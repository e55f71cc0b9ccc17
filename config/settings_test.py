"""Settings for the test suite and the workers it starts: the main settings plus
a test app with the sagas the tests drive, and a result backend so that tests
can wait on the tasks they send.

``DEBUG`` is off unless set; the suite runs as a laptop does (the development
key, failure injection), so it is on here unless the environment says
otherwise. The processes the tests start inherit it. pytest-django still runs
each test with ``settings.DEBUG`` off, as Django's own test runner does.
"""
import os

os.environ.setdefault("DEBUG", "1")
# The shared Redis cache is keyed per test run (the workers a run starts inherit the variable), so
# runs at once on one machine never see, or clear, each other's throttle counts and cached figures.
os.environ.setdefault("CACHE_KEY_PREFIX", f"test-{os.getpid()}")

from .settings import *  # noqa: E402,F401,F403
from .settings import CELERY_BROKER_URL, INSTALLED_APPS  # noqa: E402

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
# Redis stores results; with RabbitMQ as broker, results come back over RPC.
CELERY_RESULT_BACKEND = CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else "rpc://"
CELERY_TASK_IGNORE_RESULT = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Every scrape computes its figures: tests change rows between two scrapes.
SAGAS_METRICS_CACHE_SECONDS = 0
# A worker a test starts to be killed where a child saga's end is committed and its parent not told yet
# (``tests.testapp.apps.stop_at_child_end``): ``kill:<path>`` or ``hold:<path>``; empty everywhere else.
TESTS_STOP_AT_CHILD_END = os.environ.get("TESTS_STOP_AT_CHILD_END", "")
