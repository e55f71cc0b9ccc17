"""Which worker process holds an attempt, and whether it is still alive.

Every process that runs steps (each prefork pool child, or the worker itself
with the solo and threads pools) heartbeats into ``WorkerBeat`` from a thread
of its own, every ``SAGAS_HEARTBEAT_INTERVAL`` seconds, on the database's
clock. A claimed attempt records the process that holds it
(``StepRecord.held_by``). An attempt whose holder has not beaten for
``SAGAS_WORKER_DEAD_AFTER`` seconds is lost at once, without waiting for its
lease (the step's timeout): that is what brings a saga held by a dead worker
back in seconds.

A holder on this machine (same kernel and pid namespace) is checked at once
with ``kill(pid, 0)``: a pool child the worker lost is known dead before its
heartbeat goes stale. A holder with no heartbeat row at all (a shell, a test
process) is judged by its lease alone.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models.functions import Now

logger = logging.getLogger(__name__)

_identity: tuple[int, str] | None = None
_beating_pid: int | None = None


def _machine() -> str:
    """This kernel and pid namespace: two processes with it see each other's pids."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}.{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


_MACHINE = _machine()


def identity() -> str:
    """This process's name as an attempt's holder: host, machine, pid and a random token."""
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:  # a forked child gets a name of its own
        host = socket.gethostname()[:60]
        _identity = (pid, f"{host}|{_MACHINE}|{pid}|{uuid.uuid4().hex[:8]}")
    return _identity[1]


def _parse(holder: str) -> tuple[str, int] | None:
    parts = holder.split("|")
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def dead_here(holder: str) -> bool:
    """The holder ran on this machine and its process is gone."""
    parsed = _parse(holder)
    if parsed is None or not _MACHINE or parsed[0] != _MACHINE:
        return False
    try:
        os.kill(parsed[1], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def dead_holders(holders: set[str], now: datetime) -> set[str]:
    """Those of ``holders`` known dead: gone from this machine, or silent too long."""
    from .models import WorkerBeat

    dead = {h for h in holders if dead_here(h)}
    rest = holders - dead
    if rest:
        silent_since = now - timedelta(seconds=settings.SAGAS_WORKER_DEAD_AFTER)
        dead |= set(WorkerBeat.objects.filter(id__in=rest, beat_at__lt=silent_since).values_list("id", flat=True))
    return dead


def beat_once() -> None:
    from .models import WorkerBeat

    me = identity()
    if not WorkerBeat.objects.filter(id=me).update(beat_at=Now()):
        WorkerBeat.objects.create(id=me, hostname=socket.gethostname()[:200], pid=os.getpid(),
                                  started_at=Now(), beat_at=Now())


def _beat_forever(stop: threading.Event, interval: float | None = None) -> None:
    interval = settings.SAGAS_HEARTBEAT_INTERVAL if interval is None else interval
    while not stop.is_set():
        try:
            close_old_connections()
            beat_once()
        except Exception as exc:  # noqa: BLE001 - any error (InterfaceError is no DatabaseError): the
            # next beat tries again on a new connection; this thread must never end while its process runs
            logger.warning("heartbeat of %s failed: %s", identity(), exc)
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - a connection that cannot even close is dropped all the same
                logger.warning("heartbeat of %s: could not close its connection", identity())
        stop.wait(interval)


def start_heartbeat() -> None:
    """Heartbeat from a daemon thread of this process (once per process)."""
    global _beating_pid
    if _beating_pid == os.getpid() or settings.SAGAS_HEARTBEAT_INTERVAL <= 0:
        return
    _beating_pid = os.getpid()
    threading.Thread(target=_beat_forever, args=(threading.Event(),), name="sagas-heartbeat",
                     daemon=True).start()


def forget_silent_workers(older_than: float = 3600.0) -> int:
    """Drop heartbeat rows silent for ``older_than`` seconds that hold no attempt."""
    from .models import StepRecord, WorkerBeat

    held = StepRecord.objects.filter(held_by__isnull=False).values("held_by")
    stale = WorkerBeat.objects.filter(beat_at__lt=Now() - timedelta(seconds=older_than)).exclude(id__in=held)
    return stale.delete()[0]
