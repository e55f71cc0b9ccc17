import pytest


@pytest.fixture
def sent(monkeypatch):
    """Record what the engine would send to the broker, instead of sending it."""
    from sagas import canvas

    messages = []
    monkeypatch.setattr(canvas, "dispatch_forward",
                        lambda saga_id, index=0, **_: messages.append(("forward", saga_id, index)))
    monkeypatch.setattr(canvas, "dispatch_steps",
                        lambda saga_id, indices, **_: messages.append(("steps", saga_id, indices)))
    monkeypatch.setattr(canvas, "dispatch_compensation",
                        lambda saga_id, indices, **_: messages.append(("compensate", saga_id, indices)))
    monkeypatch.setattr(canvas, "dispatch_late_compensation",
                        lambda saga_id, index, attempt, result, **_: messages.append(
                            ("late", saga_id, (index, attempt, result))))
    monkeypatch.setattr(canvas, "dispatch_child_ended",
                        lambda parent_id, child_id: messages.append(("child_ended", parent_id, child_id)))
    return messages


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test starts with an empty shared cache: no throttle counts or alert marks from earlier tests."""
    from django.conf import settings
    from django.core.cache import cache

    prefix = settings.CACHES["default"].get("KEY_PREFIX")
    if prefix and "redis" in settings.CACHES["default"]["BACKEND"]:
        # Only this run's keys: clear() would empty the database under another run going on at once.
        client = cache._cache.get_client(write=True)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    else:
        cache.clear()


def _registering(register):
    """Run ``register`` (sagas.sagas.register_*_sagas) for one test, then forget what it registered."""
    from sagas.definitions import registry

    sagas, families = {s.key for s in registry}, registry.families()
    register()
    yield
    for saga in list(registry):
        if saga.key not in sagas:
            registry.unregister(saga.name, saga.version)
    for prefix in registry.families() - families:
        registry.unregister_family(prefix)


@pytest.fixture
def bench_sagas():
    """The benchmark's saga types, registered as saga_bench registers them."""
    from sagas.sagas import register_bench_sagas

    yield from _registering(register_bench_sagas)


@pytest.fixture
def chaos_sagas():
    """The chaos saga types, registered as saga_chaos registers them."""
    from sagas.sagas import register_chaos_sagas

    yield from _registering(register_chaos_sagas)
