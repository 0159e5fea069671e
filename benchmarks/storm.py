"""What a crowd's storm costs two honest users: their latency through it.

Issue 15's attacks in full size, against a running server on loopback::

    trichat serve --port 7000 --max-per-ip 0 --max-clients 12000 \\
        --logins-per-ip 0 --login-timeout 5 &
    python benchmarks/storm.py drop 4000 --port 7000      # logged in, gone at once
    python benchmarks/storm.py timeout 10000 --port 7000  # never log in: timed out
    python benchmarks/storm.py churn 9000 --port 7000     # connect, close, again
    python benchmarks/storm.py slow 20 --port 7000        # slow readers, filled

Throughout, a second process (the "honest pair") sends one direct message
from ``alice`` to ``bob`` every 10 ms and times each from send to receipt.
It prints the pair's latency before the storm and while it lasts (median,
p99, max) and whether any message was lost. The crowd is plain sockets in
this process: in ``drop`` a thread reads everything sent to it (so nobody
is dropped as too slow) until they all close at once.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.connection
import selectors
import socket
import statistics
import sys
import threading
import time

from trichat._process import raise_file_limit

INTERVAL = 0.01  # seconds between the pair's messages


def honest_pair(
    host: str, port: int, results: multiprocessing.connection.Connection
) -> None:
    """Alice talks to bob every INTERVAL until told to stop; send back each
    message's (sent_at, latency) and how many never arrived."""
    alice = socket.create_connection((host, port))
    bob = socket.create_connection((host, port))
    suffix = str(time.monotonic_ns() % 100000)
    a_name, b_name = "alice" + suffix, "bob" + suffix
    alice.sendall(f"login|{a_name}\n".encode())
    bob.sendall(f"login|{b_name}\n".encode())
    timings: list[tuple[float, float]] = []
    sent = 0
    done = threading.Event()
    stopped = [0.0]

    def receive() -> None:
        buffer = b""
        prefix = f"talk|{a_name}|{b_name}|".encode()
        bob.settimeout(0.5)
        while not done.is_set() or len(timings) < sent:
            try:
                chunk = bob.recv(65536)
            except TimeoutError:
                if done.is_set() and time.monotonic() > stopped[0] + 10:
                    return  # the rest is lost
                continue
            if not chunk:
                return
            now = time.monotonic()
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(prefix):
                    stamp = float(line.rsplit(b"|", 1)[1])
                    timings.append((stamp, now - stamp))

    errors: list[str] = []

    def drain_alice() -> None:
        # What the server answers alice: nothing, unless it refuses a line.
        alice.settimeout(0.5)
        buffer = b""
        while not done.is_set():
            try:
                chunk = alice.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            *lines, buffer = (buffer + chunk).split(b"\n")
            errors.extend(line.decode() for line in lines if line.startswith(b"error|"))

    threads = [threading.Thread(target=receive), threading.Thread(target=drain_alice)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both logged in before the first message is timed
    next_at = time.monotonic()
    while True:
        if results.poll():
            if results.recv() != "broadcast":
                break
            # The slow-reader attack: one message to everyone from alice,
            # among them the slow readers a helper filled.
            alice.sendall(b"talk|*|" + b"x" * 4000 + b"\n")
        alice.sendall(f"talk|{b_name}|{time.monotonic():.6f}\n".encode())
        sent += 1
        next_at += INTERVAL
        time.sleep(max(0.0, next_at - time.monotonic()))
    stopped[0] = time.monotonic()
    done.set()
    for thread in threads:
        thread.join(timeout=15)
    results.send((timings, sent, errors))
    alice.close()
    bob.close()


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "no messages"
    ms = sorted(1000 * lat for lat in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{len(ms)} messages: median {statistics.median(ms):.1f} ms, "
        f"p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
    )


def connect_many(host: str, port: int, count: int) -> list[socket.socket]:
    crowd = []
    for _ in range(count):
        crowd.append(socket.create_connection((host, port), timeout=10))
    return crowd


def drop(host: str, port: int, count: int) -> tuple[float, float]:
    """Log *count* users in (reading all they get), then close them all at
    once; the storm is from the close until the server is idle again."""
    crowd = connect_many(host, port, count)
    selector = selectors.DefaultSelector()
    for number, sock in enumerate(crowd):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, sock)
        sock.send(f"login|crowd{number}\n".encode())
    stop = threading.Event()

    def read_all() -> None:
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.1):
                with contextlib.suppress(OSError):
                    key.data.recv(262144)

    reader = threading.Thread(target=read_all)
    reader.start()
    # Until the last login has reached everyone: quiet for a second.
    time.sleep(max(2.0, count / 1000))
    stop.set()
    reader.join()
    started = time.monotonic()
    for sock in crowd:
        sock.close()
    return started, started + 3.0


def timeout(host: str, port: int, count: int, wait: float) -> tuple[float, float]:
    """Open *count* connections that never log in and wait for the server
    to time them out."""
    started = time.monotonic()
    crowd = connect_many(host, port, count)
    opened = time.monotonic()
    print(f"  {count} connections open in {opened - started:.1f} s", flush=True)
    selector = selectors.DefaultSelector()
    for sock in crowd:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, sock)
    closed = 0
    deadline = opened + wait + 30
    while closed < count and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            ended: socket.socket = key.data
            try:
                data = ended.recv(4096)
            except OSError:
                data = b""
            if not data:
                selector.unregister(ended)
                ended.close()
                closed += 1
    print(f"  {closed} timed out by {time.monotonic() - started:.1f} s", flush=True)
    for sock in crowd:
        sock.close()
    # The storm: from the first time-out on.
    return started + wait, time.monotonic()


def slow(
    host: str, port: int, count: int, pair: multiprocessing.connection.Connection
) -> tuple[float, float]:
    """*count* readers that are slow but steady (a 4 KB receive buffer,
    8 KB read every 0.5 s), each filled with 200 x 4 KB by a helper; then
    alice (of the honest pair) sends one message to everyone, and goes on
    talking to bob. Lasts until the readers have read 30 s."""
    readers = []
    for number in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, port))
        sock.sendall(f"login|slow{number}\n".encode())
        readers.append(sock)
    helper = socket.create_connection((host, port))
    helper.sendall(b"login|helper\n")
    stop = threading.Event()

    def read_slowly() -> None:
        for sock in readers:
            sock.setblocking(False)
        while not stop.wait(0.5):
            for sock in readers:
                with contextlib.suppress(OSError):
                    sock.recv(8192)

    def drain_helper() -> None:
        helper.settimeout(0.5)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                helper.recv(65536)

    threads = [
        threading.Thread(target=read_slowly),
        threading.Thread(target=drain_helper),
    ]
    for thread in threads:
        thread.start()
    filler = b"x" * 4000
    for _ in range(200):
        helper.sendall(
            b"".join(b"talk|slow%d|%s\n" % (n, filler) for n in range(count))
        )
    time.sleep(1.0)
    started = time.monotonic()
    pair.send("broadcast")
    time.sleep(30.0)
    stop.set()
    for thread in threads:
        thread.join()
    for sock in [*readers, helper]:
        sock.close()
    return started, time.monotonic()


def churn(host: str, port: int, count: int, seconds: float) -> tuple[float, float]:
    """Open *count* connections and close them, every 5 s, for *seconds*."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        round_start = time.monotonic()
        for sock in connect_many(host, port, count):
            sock.close()
        time.sleep(max(0.0, 5.0 - (time.monotonic() - round_start)))
    return started, time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attack", choices=["drop", "timeout", "churn", "slow"])
    parser.add_argument("count", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument(
        "--login-timeout", type=float, default=5.0, help="the server's (timeout)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="(churn)")
    args = parser.parse_args()
    raise_file_limit(args.count + 64)
    ours, theirs = multiprocessing.Pipe()
    pair = multiprocessing.Process(
        target=honest_pair, args=(args.host, args.port, theirs)
    )
    pair.start()
    time.sleep(2.0)  # the pair's quiet baseline
    crowd_at = time.monotonic()
    try:
        if args.attack == "drop":
            start, end = drop(args.host, args.port, args.count)
        elif args.attack == "timeout":
            start, end = timeout(args.host, args.port, args.count, args.login_timeout)
        elif args.attack == "slow":
            start, end = slow(args.host, args.port, args.count, ours)
        else:
            start, end = churn(args.host, args.port, args.count, args.seconds)
        time.sleep(max(0.0, end - time.monotonic()) + 1.0)
    finally:
        ours.send("stop")
        timings, sent, errors = ours.recv()
        pair.join()
    quiet = [lat for at, lat in timings if at < crowd_at]
    arriving = [lat for at, lat in timings if crowd_at <= at < start]
    storm = [lat for at, lat in timings if at >= start]
    print(f"{args.attack} {args.count}")
    print(f"  quiet:          {summary(quiet)}")
    if arriving:
        print(f"  crowd arriving: {summary(arriving)}")
    print(f"  the storm:      {summary(storm)}")
    lost = sent - len(timings)
    print(f"  lost: {lost} of {sent}")
    for error in sorted(set(errors)):
        print(f"  alice was told {error!r} {errors.count(error)} times")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
