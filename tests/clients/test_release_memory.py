"""The ClientApp's release_memory mod: imports frozen once, a collection after every message, and no walk of
the frozen objects per message (gc.get_freeze_count walks them all: half a device's time at 100 devices)."""

import gc

import clients.client_app as client_app


def test_imports_are_frozen_on_the_first_message_without_counting_the_frozen(monkeypatch):
    calls = {"freeze": 0, "collect": 0}

    def count(name, real):
        def wrapped(*args):
            calls[name] += 1
            return real(*args)

        return wrapped

    def no_count():
        raise AssertionError("get_freeze_count walks every frozen object: not per message")

    monkeypatch.setattr(client_app, "_FROZEN", False)
    monkeypatch.setattr(gc, "freeze", count("freeze", gc.freeze))
    monkeypatch.setattr(gc, "collect", count("collect", gc.collect))
    monkeypatch.setattr(gc, "get_freeze_count", no_count)
    replies = [client_app.release_memory(i, None, lambda msg, _ctx: msg + 1) for i in range(3)]
    assert replies == [1, 2, 3]
    assert client_app._FROZEN and calls == {"freeze": 1 + 3, "collect": 3}  # the imports once, then each message
