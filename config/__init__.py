# The Celery app must be loaded whenever Django is, so that shared_task
# binds to it (and its broker) in web and shell processes too.
from .celery import app as celery_app

__all__ = ("celery_app",)
