"""The Celery application: configured from Django settings (CELERY_* names)."""
import os

from celery import Celery
from celery.signals import beat_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@beat_init.connect
def _beat_announces_no_task(sender, **_) -> None:
    """Beat sends only the sweeper (every few seconds) and retention: announced with task-sent events
    (``CELERY_TASK_SEND_SENT_EVENT``, kept for the messages web and workers send), they would fill
    Flower's task list. The sweep task sends no worker events either (``sagas.tasks``)."""
    sender.app.conf.task_send_sent_event = False
