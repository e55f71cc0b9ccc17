"""A saga that becomes ``failed`` needs a person: say so loudly, without flooding anyone's inbox.

The engine calls ``saga_failed`` when it moves a saga to ``failed``; the
alert goes out only once that transition commits (a rolled-back one alerts
nobody). Each is logged at ERROR; a mail goes to ``ADMINS`` at most once per
saga type per ``SAGAS_ALERT_MAIL_INTERVAL`` seconds, counted in the shared
cache so the limit holds across worker processes; the mail names how many
failures of that type were held back since the last one. An alert that
cannot be sent is logged, never raised: the transition has happened.

Django's own error mails (``RateLimitedAdminEmailHandler``, set in
``LOGGING``) are held to the same limit, per kind of error.
"""
from __future__ import annotations

import logging
from functools import partial

from django.conf import settings
from django.core.cache import cache
from django.core.mail import mail_admins
from django.db import transaction
from django.utils.log import AdminEmailHandler

logger = logging.getLogger("sagas.alerts")


def saga_failed(saga) -> None:
    """Alert about ``saga`` (its status just became failed) once the surrounding transaction commits.

    Its error goes out with the values of its sensitive input fields masked
    (``Saga(..., sensitive=...)``): logs and mails reach people of every role.
    """
    from .access import masked_text

    error = masked_text(saga.error, saga.saga_type, saga.input)
    transaction.on_commit(partial(alert_failed, str(saga.pk), saga.saga_type, error), robust=True)


def saga_paused(saga) -> None:
    """Alert about ``saga``, which paused on its own (a step after its pivot failed for good), as for a failure."""
    from .access import masked_text

    error = masked_text(saga.error, saga.saga_type, saga.input)
    transaction.on_commit(partial(alert_paused, str(saga.pk), saga.saga_type, error), robust=True)


def _keys(kind: str) -> tuple[str, str]:
    return f"sagas:alert:mailed:{kind}", f"sagas:alert:held:{kind}"


def may_mail(kind: str, marker: str = "1") -> int | None:
    """Whether a mail of ``kind`` may go out now: the number of mails of that kind held back since
    the last one, or None (hold this one back, and count it).

    At most one per ``SAGAS_ALERT_MAIL_INTERVAL`` seconds per kind, counted in
    the shared cache; without a cache, always (better too many than none).
    """
    mailed, held = _keys(kind)
    try:
        if not cache.add(mailed, marker, timeout=settings.SAGAS_ALERT_MAIL_INTERVAL):
            try:
                cache.incr(held)
            except ValueError:  # the first one held back since the last mail
                cache.set(held, 1, timeout=None)
            return None
        others = cache.get(held) or 0
        cache.delete(held)
    except Exception:
        logger.exception("alerts: the cache did not answer; mailing without a rate limit")
        others = 0
    return others


def alert_failed(saga_id: str, saga_type: str, error: str) -> bool:
    """Log the failure; mail it unless a mail for this saga type went out recently. True if a mail was sent."""
    logger.error("saga %s (%s) failed and needs a person: %s", saga_id, saga_type, error)
    others = may_mail(saga_type, saga_id)
    if others is None:
        return False
    more = (f"\n\n{others} other saga(s) of this type failed since the last mail about it; "
            "they are on the live page.") if others else ""
    try:
        mail_admins(
            f"saga {saga_type} failed: a person must act",
            f"Saga {saga_id} ({saga_type}) failed: a compensation could not complete.\n\n"
            f"Error: {error}\n\nOpen it in the admin (/admin/sagas/sagainstance/{saga_id}/change/) and retry "
            f"its compensation once the cause is fixed.{more}",
            fail_silently=False,
        )
    except Exception:
        logger.exception("alerts: could not mail the failure of saga %s", saga_id)
        return False
    return True


def alert_paused(saga_id: str, saga_type: str, error: str) -> bool:
    """Log the pause; mail it under the same limit as failures. True if a mail was sent."""
    logger.error("saga %s (%s) paused past its pivot and needs a person: %s", saga_id, saga_type, error)
    others = may_mail(saga_type, saga_id)
    if others is None:
        return False
    try:
        mail_admins(
            f"saga {saga_type} paused: a person must act",
            f"Saga {saga_id} ({saga_type}) paused: a step after its point of no return (its pivot) failed "
            f"for good, so it is not undone.\n\nError: {error}\n\nOpen it in the admin "
            f"(/admin/sagas/sagainstance/{saga_id}/change/): resume it once the cause is fixed (with corrected "
            f"input if need be), or skip the step with the result of doing it by hand."
            + (f"\n\n{others} other alert(s) about this type were held back since the last mail." if others else ""),
            fail_silently=False,
        )
    except Exception:
        logger.exception("alerts: could not mail the pause of saga %s", saga_id)
        return False
    return True


class RateLimitedAdminEmailHandler(AdminEmailHandler):
    """Django's error mails (a 500 and the like) under the same limit: one per kind of error per interval.

    The kind is the logger and the exception's type (or the message's
    template): a flood of one error sends one mail, and the next one says how
    many were held back; the log still has each.
    """

    def emit(self, record: logging.LogRecord) -> None:
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        others = may_mail(f"django:{record.name}:{exc_type or record.msg}")
        if others is None:
            return
        if others:  # on a copy: the log's other handlers print the record as it was
            record = logging.makeLogRecord({**record.__dict__,
                                            "msg": f"{record.msg} ({others} more like it since the last mail)"})
        super().emit(record)


def late_compensation_failed(saga, step: str, error: str) -> None:
    """A late success could not be undone (its compensation kept failing): a person must look."""
    from .access import masked_text

    error = masked_text(error, saga.saga_type, saga.input)
    transaction.on_commit(partial(
        alert_failed, str(saga.pk), saga.saga_type,
        f"step {step}: a late success of an attempt judged dead could not be compensated: {error}"), robust=True)
