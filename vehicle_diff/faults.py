"""Named fault points: tests stop, interrupt or kill a process at an exact place instead of guessing when to send
a signal.

`VEHICLE_DIFF_KILL_AT=NAME` SIGKILLs the process the first time it reaches `fault_point(NAME)`; `NAME:N` on the
N-th time; several points may be given, comma-separated. `VEHICLE_DIFF_INTERRUPT_AT` sends SIGINT to the whole
process group there instead, as Ctrl-C in a terminal does. `VEHICLE_DIFF_STOP_AT` SIGSTOPs the process (alive,
holding what it holds), so a test can act while it is at a known place (`os.waitpid(pid, os.WUNTRACED)` returns
once it is there), then kill or continue it. Unset (always, outside tests) a point costs three dict lookups.
"""

import os
import signal
from collections import Counter

ACTIONS = {
    "VEHICLE_DIFF_KILL_AT": lambda: os.kill(os.getpid(), signal.SIGKILL),
    "VEHICLE_DIFF_INTERRUPT_AT": lambda: os.killpg(os.getpgrp(), signal.SIGINT),
    "VEHICLE_DIFF_STOP_AT": lambda: os.kill(os.getpid(), signal.SIGSTOP),
}
_reached: Counter = Counter()


def named_points(variable: str) -> dict[str, int]:
    points = {}
    for item in filter(None, (part.strip() for part in os.environ.get(variable, "").split(","))):
        name, _, count = item.partition(":")
        points[name] = int(count or 1)
    return points


def fault_point(name: str) -> None:
    """Signal this process here when the environment names this point (and this is the named arrival)."""
    variables = [variable for variable in ACTIONS if variable in os.environ]
    if not variables:
        return
    _reached[name] += 1
    for variable in variables:
        if named_points(variable).get(name) == _reached[name]:
            ACTIONS[variable]()
