"""The least a Trio server can do to relay trichat talk: a yardstick.

Not trichat: no validation, limits, queues, presence or errors. It answers
``login|NAME`` and relays ``talk|TO|TEXT`` as ``talk|FROM|TO|TEXT``, one
task per connection, reading with ``os.read`` and ``wait_readable`` and
writing with ``os.write``. docs/performance.md uses it to tell what part
of trichat's latency belongs to Trio's way of waiting rather than to
trichat's own code::

    python benchmarks/bare_relay.py --port 7000 &
    /tmp/trichat-loadgen -proto trichat -addr 127.0.0.1:7000 -pid $! \\
        -scenario rate -P 50 -R 20000 -D 5s
"""

from __future__ import annotations

import argparse
import os
from functools import partial

import trio

from trichat._process import until_interrupted

_online: dict[bytes, int] = {}  # name -> socket descriptor


async def _relay(stream: trio.SocketStream) -> None:
    fd = stream.socket.fileno()
    name = b""
    rest = b""
    try:
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                continue
            if not data:
                return
            *lines, rest = (rest + data).split(b"\n")
            out: dict[int, list[bytes]] = {}
            for line in lines:
                if line.startswith(b"talk|") and name:
                    target = _online.get(line[5:].partition(b"|")[0])
                    if target is not None:
                        frame = b"talk|" + name + b"|" + line[5:] + b"\n"
                        out.setdefault(target, []).append(frame)
                elif line.startswith(b"login|") and not name:
                    name = line[6:]
                    _online[name] = fd
                    os.write(fd, line + b"\n")
            for target, frames in out.items():
                os.write(target, b"".join(frames))
    except OSError:
        return  # reset, or full: a yardstick does not queue
    finally:
        if name:
            _online.pop(name, None)
        await trio.aclose_forcefully(stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7000)
    args = parser.parse_args()
    # Ctrl-C cancels it, with no traceback.
    trio.run(until_interrupted, partial(trio.serve_tcp, _relay, args.port))


if __name__ == "__main__":
    main()
