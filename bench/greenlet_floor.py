"""What one waiting greenlet costs, before any HTTP: the floor under scenario (c).

    .venv/bin/python bench/greenlet_floor.py

Spawns 5,000 greenlets that each wait on a gevent Event (as every idle stream
does) and prints the resident memory they add, per greenlet.
"""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402
import os  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

COUNT = 5000


def resident_bytes():
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def wait_in_a_generator(event):
    def frames():
        while True:
            event.wait(15)  # the heartbeat timeout, as Reader.next_batch does
            yield b""

    for _ in frames():
        pass


def main():
    events = [Event() for _ in range(COUNT)]
    gc.collect()
    before = resident_bytes()
    waiting = [gevent.spawn(wait_in_a_generator, event) for event in events]
    gevent.sleep(0.5)
    per = (resident_bytes() - before) / COUNT / 1024
    print(f"{per:.1f} KiB per waiting greenlet ({COUNT} greenlets, gevent {gevent.__version__})")
    gevent.killall(waiting)


if __name__ == "__main__":
    main()
