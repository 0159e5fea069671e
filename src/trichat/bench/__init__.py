"""``trichat bench``, the load generator: point it at any trichat server.

Imported only by that command: ``cli`` (its options and ``main``) is all
that building the ``trichat`` parser loads; ``main`` imports the rest.

- ``cli``: the options, checked into ``Settings``, and the command.
- ``runner``: one run, from the first connection to the printed result.
- ``scenarios``: the loads (``dm``, ``fanout``, ``rate``, ``idle``,
  ``rooms``, the last in ``rooms``).
- ``traffic``: what they share: users on the client library, the
  counters, the measured window.
- ``latency``: the stamp each message carries, and percentiles.
- ``usage``: CPU and memory of the generator and the server.
- ``report``: the result, its warnings, and the table.
"""
