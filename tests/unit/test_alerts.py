"""A saga that becomes failed is logged at ERROR and mailed to ADMINS, at most once per type per interval."""
import logging

import pytest
from django.core import mail
from django.core.cache import cache

from sagas import Retry, start_saga
from sagas.alerts import alert_failed
from sagas.engine import Decision, begin_compensation, execute_compensation, execute_step
from sagas.models import SagaStatus

SAGA = "tests.three_steps"


@pytest.fixture(autouse=True)
def alert_settings(settings):
    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "alerts-tests"}}
    settings.SAGAS_ALERT_MAIL_INTERVAL = 600
    cache.clear()
    yield
    cache.clear()


def test_a_failure_is_logged_at_error_and_mailed(caplog):
    with caplog.at_level(logging.ERROR, logger="sagas.alerts"):
        assert alert_failed("s-1", "shop.order", "compensation of step a failed: boom") is True

    assert "saga s-1 (shop.order) failed and needs a person" in caplog.text
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ops@example.com"]
    assert "shop.order failed" in mail.outbox[0].subject
    assert "compensation of step a failed: boom" in mail.outbox[0].body


def test_further_failures_of_the_type_are_held_back_and_counted_in_the_next_mail(caplog):
    alert_failed("s-1", "shop.order", "boom")
    with caplog.at_level(logging.ERROR, logger="sagas.alerts"):
        assert alert_failed("s-2", "shop.order", "boom") is False
        assert alert_failed("s-3", "shop.order", "boom") is False
    assert len(mail.outbox) == 1
    assert "s-2" in caplog.text and "s-3" in caplog.text  # every one is logged all the same

    cache.delete("sagas:alert:mailed:shop.order")  # the interval has passed
    assert alert_failed("s-4", "shop.order", "boom") is True

    assert len(mail.outbox) == 2
    assert "2 other saga(s) of this type failed since the last mail" in mail.outbox[1].body


def test_each_saga_type_has_its_own_limit():
    alert_failed("s-1", "shop.order", "boom")
    alert_failed("s-2", "hr.hire", "boom")

    assert len(mail.outbox) == 2


def test_a_mail_server_that_fails_does_not_raise(settings, caplog):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9  # nothing listens there

    assert alert_failed("s-1", "shop.order", "boom") is False
    assert "could not mail the failure of saga s-1" in caplog.text


def test_the_engine_alerts_once_the_move_to_failed_commits(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(SAGA, input={"fail": {"b": "permanent"}, "comp_fail": {"a": 5}})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)
    begin_compensation(saga.id)

    with django_capture_on_commit_callbacks(execute=True):
        outcome = execute_compensation(saga.id, 0, Retry(max_attempts=1))

    saga.refresh_from_db()
    assert outcome.decision is Decision.FAILED and saga.status == SagaStatus.FAILED
    assert len(mail.outbox) == 1
    assert str(saga.id) in mail.outbox[0].body


def test_nothing_is_mailed_before_the_transition_commits(db, sent, django_capture_on_commit_callbacks):
    saga = start_saga(SAGA, input={"fail": {"b": "permanent"}, "comp_fail": {"a": 5}})
    execute_step(saga.id, 0)
    execute_step(saga.id, 1)
    begin_compensation(saga.id)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        execute_compensation(saga.id, 0, Retry(max_attempts=1))

    assert mail.outbox == []
    assert callbacks  # the alert waits for the commit
