"""Named fault points: tests kill a process at an exact place instead of guessing when to send a signal.

`VEHICLE_DIFF_KILL_AT=NAME` SIGKILLs the process the first time it reaches `fault_point(NAME)`; `NAME:N` on the
N-th time. Several points may be given, comma-separated. `VEHICLE_DIFF_INTERRUPT_AT=NAME` sends SIGINT to the
process's whole process group there instead, as Ctrl-C in a terminal does; `VEHICLE_DIFF_STOP_AT=NAME` SIGSTOPs
the process (alive, holding what it holds) until the test sends SIGCONT. Unset (always, outside tests) it costs
one dict lookup.
"""

import os
import signal
from collections import Counter

ENV = "VEHICLE_DIFF_KILL_AT"
INTERRUPT_ENV = "VEHICLE_DIFF_INTERRUPT_AT"
STOP_ENV = "VEHICLE_DIFF_STOP_AT"
_reached: Counter = Counter()


def kill_points(env: str = ENV) -> dict[str, int]:
    points = {}
    for item in filter(None, (part.strip() for part in os.environ.get(env, "").split(","))):
        name, _, count = item.partition(":")
        points[name] = int(count or 1)
    return points


def fault_point(name: str) -> None:
    """SIGKILL this process here when the environment names this point (and this is the named arrival)."""
    if not any(env in os.environ for env in (ENV, INTERRUPT_ENV, STOP_ENV)):
        return
    _reached[name] += 1
    if kill_points().get(name) == _reached[name]:
        os.kill(os.getpid(), signal.SIGKILL)
    if kill_points(INTERRUPT_ENV).get(name) == _reached[name]:
        os.killpg(os.getpgrp(), signal.SIGINT)
    if kill_points(STOP_ENV).get(name) == _reached[name]:
        os.kill(os.getpid(), signal.SIGSTOP)
