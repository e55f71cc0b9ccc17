"""Signal tokens stay out of access logs.

A waiting step's token is a credential (``/api/signals/{token}/complete/``
needs nothing else), and it travels in the URL's path, which every access log
writes. A filter on the access loggers of the servers this project runs
(uvicorn, gunicorn, Django's runserver) writes ``[token]`` in its place; a
proxy in front must be told the same (the guide's Security page shows nginx's way).
"""
from __future__ import annotations

import logging
import re

TOKEN_IN_PATH = re.compile(r"(/api/signals/)[^/\s?\"']+")
ACCESS_LOGGERS = ("uvicorn.access", "gunicorn.access", "django.server")


def redacted(text: str) -> str:
    return TOKEN_IN_PATH.sub(r"\1[token]", text)


class TokenRedactingFilter(logging.Filter):
    """Rewrites a record's message and arguments with every signal token replaced by ``[token]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redacted(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redacted(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redacted(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install() -> None:
    """Put the filter on every access logger (once: a second call adds nothing)."""
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TokenRedactingFilter) for f in logger.filters):
            logger.addFilter(TokenRedactingFilter())
