"""Leaving on the first SIGINT or SIGTERM while a node is still starting, and saying so.

`run_node` (ros/spin.py) turns SIGINT/SIGTERM into a clean shutdown. A node that is still loading a checkpoint,
building the simulated workcell or connecting to a robot has nothing to bring to rest, but the thread doing that
work may sit in a call nothing interrupts (CUDA initialisation, a compile, a TCP connect without a timeout), and
the interpreter's exit waits for it and for the thread pools it started: under `ros2 launch` such a node outlived
SIGINT and SIGTERM until launch killed it. So once ROS is shut down, a node stopped while starting logs what it
was doing and leaves at once, without the interpreter's teardown. A node that was running takes the ordinary
path (the controller's controlled stop of the arm included).

A node whose constructor refuses its parameters (a ValueError: an unknown key, a value out of range) exits with
status 1 and one fatal log line carrying the message, which names the parameter and what it accepts; the
traceback is logged at debug level (`--ros-args --log-level debug`).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Callable

from rclpy.logging import get_logger

from mambavla.ros.spin import run_node


class _Signals:
    """The signals that reached a Python handler from now on (they are written to a pipe: `signal.set_wakeup_fd`)."""

    def __init__(self):
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(write, False)
        self._previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._seen: list[str] = []

    def poll(self) -> list[str]:
        """The signals received so far (the wakeup fd stays in place)."""
        try:
            data = os.read(self._read, 64)
        except BlockingIOError:
            data = b""
        self._seen += [signal.Signals(n).name for n in data if n in (signal.SIGINT, signal.SIGTERM)]
        return self._seen

    def received(self) -> list[str]:
        received = self.poll()
        signal.set_wakeup_fd(self._previous)
        return received


def run_until_stopped(name: str, node_class, starting: Callable[[object], str], args=None, threads: int = 1,
                      constructing: str = "setting the node up") -> None:
    """`run_node(node_class, args, threads)`; stopped by a signal while `starting(node)` names what the node is
    still doing, or while its constructor ran (`constructing`), log that and exit with status 0 at once."""
    signals = _Signals()
    built: list = []

    def build():
        try:
            node = node_class()
        except ValueError as err:
            if signals.poll():  # the signal broke what the constructor was doing; not a parameter's fault
                _leave(name, signals.poll()[0], constructing)
            logger = get_logger(name)
            logger.fatal(f"cannot start: {err}")
            logger.debug(traceback.format_exc())
            raise SystemExit(1) from None
        except Exception:
            # a signal inside a C extension's import (mujoco's) surfaces as that import's own error
            if signals.poll():
                _leave(name, signals.poll()[0], constructing)
            raise
        built.append(node)
        return node

    run_node(build, args, threads=threads)
    received = signals.received()
    if not received:
        return
    doing = starting(built[0]) if built else constructing
    if not doing:
        return
    _leave(name, received[0], doing)


def _leave(name: str, signal_name: str, doing: str) -> None:
    get_logger(name).info(f"stopped by {signal_name} while {doing}: leaving without waiting for it")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
