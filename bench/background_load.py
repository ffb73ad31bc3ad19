"""Background load for the latency bench: other users' ordinary activity at a fixed rate.

In the Kafka path it runs as its own producer process (``python -m bench.background_load
SERVERS TOPIC RATE USERS``); in the embedded mode as a thread putting events on the bus.
"""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

import msgspec
from confluent_kafka import Producer

from bench.common import REPO
from dwcore.schemas.codec import encode
from dwcore.schemas.event import Activity, make_event

TICK_S = 0.02


class Background:
    """Ordinary events of ``users`` users at ``rate``/s, timestamped now: creates of new files and
    small updates of files the same user created (nothing any rule counts). Events are copies of
    a pool built up front, so that the generator itself is not what limits the rate."""

    def __init__(self, rate: int, users: int, seed: int = 11) -> None:
        self.rate, self.users = rate, users
        rng = random.Random(seed)
        self.sent = 0
        self._run = uuid.uuid4().hex[:16]
        self.pool = []
        for i in range(max(users * 6, 6_000)):
            u = rng.randrange(users)
            act = Activity.CREATE if i % 3 == 0 else Activity.UPDATE
            self.pool.append(make_event(
                act, uid="x", time=0, user_name=f"bg{u:05d}", user_uid=str(30_000 + u), device="bench-bg",
                share="bg", file_path=f"/srv/bg/bg{u:05d}/doc-{i // 3}.txt", file_size=512,
                bytes_written=512 if act == Activity.UPDATE else None))

    def make(self, n: int) -> list:
        now = int(time.time() * 1000)
        pool, size, replace = self.pool, len(self.pool), msgspec.structs.replace
        out = [replace(pool[(self.sent + k) % size], uid=f"{self._run}{self.sent + k:x}", time=now) for k in range(n)]
        self.sent += n
        return out

    def pace(self, emit: Callable[[list], None], stop: threading.Event) -> float:
        """Emit at the rate until ``stop``; returns the achieved events/s."""
        t0 = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - t0) * self.rate) - self.sent
            if due > 0:
                emit(self.make(min(due, self.rate)))
            stop.wait(TICK_S)
        elapsed = time.monotonic() - t0
        return self.sent / elapsed if elapsed > 0 else 0.0


def background_main(servers: str, topic: str, rate: int, users: int) -> None:
    """Child process: produce the background to Kafka until SIGTERM; print the achieved rate."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    producer = Producer({"bootstrap.servers": servers, "linger.ms": 20, "compression.type": "lz4",
                         "partitioner": "murmur2_random", "queue.buffering.max.messages": 1_000_000})

    def emit(events: list) -> None:
        for ev in events:
            producer.produce(topic, key=ev.user_name.encode(), value=encode(ev))
        producer.poll(0)

    bg = Background(rate, users)
    sys.stdout.write("started\n")
    sys.stdout.flush()
    achieved = bg.pace(emit, stop)
    producer.flush(30)
    sys.stdout.write(f"{achieved:.1f} {bg.sent}\n")


class BackgroundProcess:
    def __init__(self, servers: str, topic: str, rate: int, users: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.background_load", servers, topic, str(rate),
                                      str(users)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "started":
            raise RuntimeError("the background producer did not start")

    def stop(self) -> float:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=60)
        return float(out.split()[0]) if out.strip() else 0.0


class BackgroundThread:
    def __init__(self, publish: Callable[[list], None], rate: int, users: int) -> None:
        self._stop = threading.Event()
        self._bg = Background(rate, users)
        self._achieved = 0.0
        self._thread = threading.Thread(target=self._run, args=(publish,), name="bench-background", daemon=True)
        self._thread.start()

    def _run(self, publish: Callable[[list], None]) -> None:
        self._achieved = self._bg.pace(publish, self._stop)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(30)
        return self._achieved


if __name__ == "__main__":
    _servers, _topic, _rate, _users = sys.argv[1:5]
    background_main(_servers, _topic, int(_rate), int(_users))
