"""Hold many connections open to a trichat server without logging in.

For the 10,000-idle-connections figure in docs/performance.md: run the
server with room for them, hold them with this, and measure the server
meanwhile with the Go generator::

    trichat serve --port 7000 --rate 0 --max-per-ip 0 \\
        --max-clients 11000 --login-timeout 600 &
    python benchmarks/hold_connections.py 10000 --port 7000 --seconds 60 &
    grep VmRSS /proc/$SERVER_PID/status
    /tmp/trichat-loadgen -proto trichat -addr 127.0.0.1:7000 -pid $SERVER_PID \\
        -scenario dm -P 50 -W 16 -D 5s

It raises its own open-file limit as far as the hard limit allows, opens
the connections one after another, says how many it holds, and closes
them all after ``--seconds`` (or at Ctrl-C).
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import time

from trichat._process import raise_file_limit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    raise_file_limit(args.count + 16)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if args.count + 16 > limit:
        print(f"can open at most about {limit} files here", file=sys.stderr)
        return 1
    held: list[socket.socket] = []
    try:
        for _ in range(args.count):
            held.append(socket.create_connection((args.host, args.port), timeout=10))
        print(f"holding {len(held)} connections for {args.seconds:g} s", flush=True)
        time.sleep(args.seconds)
    except KeyboardInterrupt:
        pass
    except OSError as error:
        print(f"after {len(held)} connections: {error}", file=sys.stderr)
        return 1
    finally:
        for sock in held:
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
