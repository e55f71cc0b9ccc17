"""Django's SQLite backend, storing every datetime with its fraction of a second, even when it is zero.

SQLite keeps datetimes as text and compares them as text. Its clock
(``Now()``, the engine's ``db_now``) writes ``2026-12-02 04:00:00.000``;
Django writes a Python datetime with ``str()``, which drops the fraction
when it is zero (``2026-12-02 04:00:00``) and otherwise has six digits. The
shorter text sorts first, so an event dated on a whole second sorted before
one written by the database's clock in that same millisecond, though it came
after it (an audit trail that did not begin with ``saga_created``). Written
here always with six digits, text order is time order: the clock's three
digits are a prefix of the same instant's six, so of two equal times the
clock's sorts first, and ``X.123`` (exactly ``X.123000``) never sorts after
``X.123456``.
"""
from datetime import datetime

from django.db.backends.sqlite3 import base
from django.db.backends.sqlite3.operations import DatabaseOperations as SQLiteOperations


class DatabaseOperations(SQLiteOperations):
    def adapt_datetimefield_value(self, value):
        text = super().adapt_datetimefield_value(value)
        if not isinstance(value, datetime):  # None, or an expression compiled into the statement
            return text
        # ``text`` is str() of the naive value: its date and time, then "." and six digits unless zero.
        return text if "." in text[19:] else f"{text[:19]}.000000{text[19:]}"


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations
