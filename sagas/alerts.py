"""A saga that becomes ``failed`` needs a person: say so loudly, without flooding anyone's inbox.

The engine calls ``saga_failed`` when it moves a saga to ``failed``; the
alert goes out only once that transition commits (a rolled-back one alerts
nobody). Each is logged at ERROR; a mail goes to ``ADMINS`` at most once per
saga type per ``SAGAS_ALERT_MAIL_INTERVAL`` seconds, counted in the shared
cache so the limit holds across worker processes; the mail names how many
failures of that type were held back since the last one. An alert that
cannot be sent is logged, never raised: the transition has happened.
"""
from __future__ import annotations

import logging
from functools import partial

from django.conf import settings
from django.core.cache import cache
from django.core.mail import mail_admins
from django.db import transaction

logger = logging.getLogger("sagas.alerts")


def saga_failed(saga) -> None:
    """Alert about ``saga`` (its status just became failed) once the surrounding transaction commits.

    Its error goes out with the values of its sensitive input fields masked
    (``Saga(..., sensitive=...)``): logs and mails reach people of every role.
    """
    from .access import masked_text

    error = masked_text(saga.error, saga.saga_type, saga.input)
    transaction.on_commit(partial(alert_failed, str(saga.pk), saga.saga_type, error), robust=True)


def _keys(saga_type: str) -> tuple[str, str]:
    return f"sagas:alert:mailed:{saga_type}", f"sagas:alert:held:{saga_type}"


def alert_failed(saga_id: str, saga_type: str, error: str) -> bool:
    """Log the failure; mail it unless a mail for this saga type went out recently. True if a mail was sent."""
    logger.error("saga %s (%s) failed and needs a person: %s", saga_id, saga_type, error)
    mailed, held = _keys(saga_type)
    try:
        if not cache.add(mailed, saga_id, timeout=settings.SAGAS_ALERT_MAIL_INTERVAL):
            try:
                cache.incr(held)
            except ValueError:  # the first one held back since the last mail
                cache.set(held, 1, timeout=None)
            return False
        others = cache.get(held) or 0
        cache.delete(held)
    except Exception:  # no cache: mail anyway, better too many than none
        logger.exception("alerts: the cache did not answer; mailing without a rate limit")
        others = 0
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
