"""The WebSocket a live page holds: staff who may read sagas; it only listens (the watcher pushes).

Who may watch is checked when it connects and again before every push: a
user whose staff status or permission is taken away stops receiving.
"""
from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth import get_user_model

from .. import access
from .watcher import watcher

FORBIDDEN = 4403  # a close code in the range applications may use: "not allowed to watch"


def may_watch(user) -> bool:
    """Staff, active, and allowed to read sagas (``sagas.access``): who may open the live page."""
    return user is not None and user.is_active and user.is_staff and access.may(user, "view")


def _fresh(user_id):
    """The user as the database has it now (permissions read anew)."""
    return get_user_model().objects.filter(pk=user_id).first()


class LivePageConsumer(AsyncWebsocketConsumer):
    exclude: tuple[str, ...] = ()

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        allowed = user is not None and getattr(user, "is_authenticated", False) and \
            await database_sync_to_async(may_watch)(user)
        if not allowed:
            # Accepted then closed with a code of our own, so the page can say why (a refused handshake can't).
            await self.close(code=FORBIDDEN)
            return
        self.user_id = user.pk
        self.exclude = tuple(await database_sync_to_async(access.forbidden_types)(user))
        await watcher.join(self)

    async def disconnect(self, code: int) -> None:
        watcher.leave(self)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Pages send nothing that matters; what they send is ignored."""

    async def push(self, text: str) -> None:
        user = await database_sync_to_async(_fresh)(getattr(self, "user_id", None))
        if user is None or not await database_sync_to_async(may_watch)(user):
            watcher.leave(self)
            await self.close(code=FORBIDDEN)
            return
        await self.send(text_data=text)
