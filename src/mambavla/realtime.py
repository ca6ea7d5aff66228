"""Keep franky from making the calling thread real-time where we did not ask for it.

libfranka (through `franky.Robot` / `franky.Gripper`) raises the calling thread to SCHED_FIFO 99
whenever it is allowed to, even with `RealtimeConfig.Ignore`. On a real-time robot PC that is the
point; in simulation and tests (root in a container, where the call succeeds) the caller becomes FIFO 99,
every process it then starts inherits that, and busy-waiting threads at that priority starve the simulator
and the nodes on a machine with few cores until runs hang.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def keep_thread_scheduling(enabled: bool = True) -> Iterator[None]:
    """Restore the calling thread's scheduling policy and priority after the block (when enabled)."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if enabled and (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)
