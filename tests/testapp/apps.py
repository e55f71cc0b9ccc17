import os
import signal
import time

from celery.exceptions import SoftTimeLimitExceeded
from django.apps import AppConfig
from django.conf import settings


class TestappConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        if settings.TESTS_STOP_AT_CHILD_END:
            stop_at_child_end(settings.TESTS_STOP_AT_CHILD_END)


def stop_at_child_end(spec: str) -> None:
    """In a worker started with ``TESTS_STOP_AT_CHILD_END=<how>:<path>``: the first child saga's end that
    this worker commits stops the process that committed it before its message to the parent is sent.

    ``kill``: that pool child SIGKILLs itself there; ``hold``: it waits there, for the test to SIGKILL the
    whole worker. ``<path>`` is created (holding the process id) once the child's end is committed; the
    ends after the first are sent as usual.
    """
    from sagas import canvas

    how, path = spec.split(":", 1)
    send = canvas.dispatch_child_ended

    def stopped(parent_id, child_id) -> None:
        try:
            marker = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # not the first: sent as usual
            return send(parent_id, child_id)
        os.write(marker, str(os.getpid()).encode())
        os.close(marker)
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        while True:  # held until the test kills this worker (a soft time limit does not end the hold)
            try:
                time.sleep(1)
            except SoftTimeLimitExceeded:
                pass

    canvas.dispatch_child_ended = stopped
