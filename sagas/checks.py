"""System checks: catch at start-up what would otherwise strand messages at run time."""
from django.conf import settings
from django.core.checks import Warning, register

from .canvas import hard_time_limit
from .definitions import registry


@register()
def visibility_timeout_covers_steps(app_configs=None, **kwargs):
    """With Redis, a message held longer than visibility_timeout is delivered again.

    A step attempt (up to its hard time limit) or a retry's countdown longer
    than that would be run twice, so warn when a definition allows it.
    """
    if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        return []
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    problems = []
    for saga in registry:
        for step in saga.steps:
            longest = max(
                hard_time_limit(step), hard_time_limit(step, compensation=True),
                step.retry.max_backoff, step.compensation_retry.max_backoff,
            )
            if longest >= visibility:
                problems.append(Warning(
                    f"saga {saga.name!r} step {step.name!r} may hold a message {longest:g}s, "
                    f"not less than the broker's visibility_timeout ({visibility}s)",
                    hint="Raise CELERY_VISIBILITY_TIMEOUT or shorten the step's timeout/max_backoff.",
                    id="sagas.W001",
                ))
    return problems
