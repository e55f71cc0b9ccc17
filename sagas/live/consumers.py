"""The WebSocket a live page holds: staff only; it only listens (the watcher pushes)."""
from __future__ import annotations

from channels.generic.websocket import AsyncWebsocketConsumer

from .watcher import watcher

FORBIDDEN = 4403  # a close code in the range applications may use: "not staff"


class LivePageConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        if not (user is not None and user.is_active and user.is_staff):
            # Accepted then closed with a code of our own, so the page can say why (a refused handshake can't).
            await self.close(code=FORBIDDEN)
            return
        await watcher.join(self)

    async def disconnect(self, code: int) -> None:
        watcher.leave(self)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Pages send nothing that matters; what they send is ignored."""

    async def push(self, text: str) -> None:
        await self.send(text_data=text)
