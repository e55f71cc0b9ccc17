"""The live page's watcher and WebSocket: one snapshot per change, pushed to every page; staff only."""
import asyncio
import json

import pytest
from asgiref.testing import ApplicationCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser

from sagas import start_saga
from sagas.live import snapshot
from sagas.live.consumers import FORBIDDEN, LivePageConsumer
from sagas.live.watcher import Watcher
from sagas.models import SagaStatus
from tests.helpers import saga_user

SAGA = "tests.three_steps"


@pytest.fixture(autouse=True)
def connections_closed_after_each_use(monkeypatch):
    """The watcher reads from a worker thread: its connection must not outlive the test (PostgreSQL then
    refuses to drop the test database)."""
    from django.db import connections

    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)


class FakePage:
    def __init__(self):
        self.received = []

    async def push(self, text):
        self.received.append(json.loads(text))


def test_snapshot_lists_sagas_in_flight_with_their_current_step(transactional_db, sent):
    saga = start_saga(SAGA, input={})

    snap = snapshot.build_snapshot()

    assert [row["id"] for row in snap["in_flight"]] == [str(saga.pk)]
    assert snap["in_flight"][0]["step"] == "a"
    assert snap["counts"] == [{"saga_type": SAGA, "counts": {SagaStatus.PENDING: 1}, "total": 1}]
    assert json.loads(snapshot.snapshot_json())["in_flight"][0]["short_id"] == saga.pk.hex[:8]


def test_watcher_pushes_one_snapshot_per_change_to_every_page(transactional_db, sent):
    watcher, pages = Watcher(), [FakePage(), FakePage()]
    watcher.pages.update(pages)

    async def look(times):
        for _ in range(times):
            await watcher.tick()

    asyncio.run(look(3))  # nothing changed after the first look: one snapshot
    assert [len(p.received) for p in pages] == [1, 1]

    for n in range(20):  # many transitions between two looks...
        start_saga(SAGA, input={"n": n})
    asyncio.run(look(2))

    assert [len(p.received) for p in pages] == [2, 2]  # ...make one more push, not twenty
    assert len(pages[0].received[-1]["in_flight"]) == 20
    assert watcher.snapshots == 2


def test_a_page_that_went_away_is_forgotten(transactional_db):
    class Gone:
        async def push(self, text):
            raise ConnectionError("closed")

    watcher, alive, gone = Watcher(), FakePage(), Gone()
    watcher.pages.update([alive, gone])

    asyncio.run(watcher.tick())

    assert watcher.pages == {alive}


def _connect(user):
    """Open the page's WebSocket as ``user`` (the ASGI handshake by hand; channels.testing needs daphne)."""
    async def run():
        scope = {"type": "websocket", "path": "/ws/sagas/live/", "headers": [], "subprotocols": [], "user": user}
        app = ApplicationCommunicator(LivePageConsumer.as_asgi(), scope)
        await app.send_input({"type": "websocket.connect"})
        assert (await app.receive_output(timeout=5))["type"] == "websocket.accept"
        answer = await app.receive_output(timeout=5)
        await app.send_input({"type": "websocket.disconnect", "code": 1000})
        await app.wait(timeout=5)
        if answer["type"] == "websocket.close":
            return False, answer.get("code"), None
        return True, None, answer["text"]
    return asyncio.run(run())


def test_staff_get_a_snapshot_as_soon_as_they_connect(transactional_db, settings):
    settings.SAGAS_LIVE_INTERVAL = 0.05
    staff = saga_user("ops", ["view_sagainstance"], is_staff=True)

    connected, _, message = _connect(staff)

    assert connected
    assert set(json.loads(message)) >= {"counts", "in_flight", "waiting", "needs_person", "latest_failures"}


@pytest.mark.parametrize("who", ["anonymous", "not staff", "staff without the view permission"])
def test_others_are_refused(transactional_db, who):
    user = {
        "anonymous": lambda: AnonymousUser(),
        "not staff": lambda: saga_user("bob", ["view_sagainstance"]),
        "staff without the view permission": lambda: get_user_model().objects.create_user("eve", is_staff=True),
    }[who]()

    connected, code, _ = _connect(user)

    assert not connected and code == FORBIDDEN


def test_a_page_whose_user_lost_the_permission_stops_receiving(transactional_db):
    from django.contrib.auth.models import Permission

    staff = saga_user("ops", ["view_sagainstance"], is_staff=True)
    page = LivePageConsumer()
    page.user_id = staff.pk
    sent, closed = [], []

    async def send(text_data=None, **_):
        sent.append(text_data)

    async def close(code=None):
        closed.append(code)

    page.send, page.close = send, close
    asyncio.run(page.push("first"))
    staff.user_permissions.remove(Permission.objects.get(codename="view_sagainstance"))
    asyncio.run(page.push("second"))

    assert sent == ["first"] and closed == [FORBIDDEN]


def test_a_page_sees_only_the_types_its_user_may_read(transactional_db, sent):
    from sagas import Saga, Step, registry

    registry.register(Saga("tests.secret_live", steps=[Step("a", lambda ctx: None)], permission="testapp.change_call"))
    try:
        start_saga("tests.secret_live", input={})
        start_saga(SAGA, input={})

        shown = snapshot.build_snapshot(exclude=("tests.secret_live",))

        assert [row["saga_type"] for row in shown["in_flight"]] == [SAGA]
        assert [row["saga_type"] for row in shown["counts"]] == [SAGA]
    finally:
        registry.unregister("tests.secret_live")
