"""One watcher per server process: it looks at the database about once a second and pushes changes to every page.

Why not a message per transition: the engine's hot path must stay as it is
(its statements per step are pinned), and 500 transitions a minute would
otherwise mean 500 pushes a minute to each page. Instead, while at least one
page is connected, the watcher reads ``snapshot.fingerprint`` (two indexed
look-ups) every ``SAGAS_LIVE_INTERVAL`` seconds; only when it changed does it
build one snapshot and send that same text to all the process's pages. So
the database sees at most one snapshot per interval per server process, and
nothing at all when nobody watches; a page sees a change within about one
interval.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from channels.db import database_sync_to_async
from django.conf import settings

from . import snapshot

logger = logging.getLogger("sagas.live")


class Page(Protocol):
    # The saga types its user may not read: pages with the same get the same snapshot.
    exclude: tuple[str, ...]

    async def push(self, text: str) -> None: ...


class Watcher:
    def __init__(self) -> None:
        self.pages: set[Page] = set()
        self.task: asyncio.Task | None = None
        self.seen: tuple | None = None
        self.latest: dict[tuple[str, ...], str] = {}  # the last snapshot sent, per ``Page.exclude``
        self.snapshots = 0  # built since the process started (tests read it)

    async def join(self, page: Page) -> None:
        """A page connected: give it the latest snapshot at once and keep it informed."""
        self.pages.add(page)
        exclude = getattr(page, "exclude", ())
        if exclude not in self.latest and self.latest:
            self.latest[exclude] = await database_sync_to_async(snapshot.snapshot_json)(exclude)
        if exclude in self.latest:
            await page.push(self.latest[exclude])
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run())

    def leave(self, page: Page) -> None:
        self.pages.discard(page)

    async def run(self) -> None:
        """Look, push if changed, sleep; stop once no page is left (the next page starts it again)."""
        try:
            while self.pages:
                try:
                    await self.tick()
                except Exception:  # the database went away for a moment: look again next time
                    logger.exception("live page: could not read the database")
                await asyncio.sleep(settings.SAGAS_LIVE_INTERVAL)
        finally:
            self.seen, self.latest = None, {}  # a later page starts from a fresh snapshot

    async def tick(self) -> None:
        seen = await database_sync_to_async(snapshot.fingerprint)()
        if seen == self.seen and self.latest:
            return
        pages = list(self.pages)
        texts = {}
        for exclude in sorted({getattr(page, "exclude", ()) for page in pages}):
            texts[exclude] = await database_sync_to_async(snapshot.snapshot_json)(exclude)
            self.snapshots += 1
        self.seen, self.latest = seen, texts
        results = await asyncio.gather(*(page.push(texts[getattr(page, "exclude", ())]) for page in pages),
                                       return_exceptions=True)
        for page, result in zip(pages, results):
            if isinstance(result, Exception):  # a page that went away: forget it
                self.pages.discard(page)


watcher = Watcher()
