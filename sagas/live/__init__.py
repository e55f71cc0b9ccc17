"""The live page (``/admin/sagas/live/``): what is in flight, waiting or broken, pushed as it changes.

- ``snapshot``: the page's figures, read in a few bounded queries, and the cheap fingerprint that tells
  whether anything changed;
- ``watcher``: one per server process, it reads the fingerprint about once a second while pages are
  connected and pushes one snapshot to all of them when it changed;
- ``consumers``: the WebSocket each page holds (Django Channels);
- ``views``: the page itself, in the admin's look.

The engine knows nothing of this: it adds no query and no message per transition.
"""
