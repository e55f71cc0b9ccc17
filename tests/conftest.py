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
    return messages
