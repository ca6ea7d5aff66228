"""The nodes' console scripts (`policy_node`, `controller_node`, `sim_node`, `recorder_node`): a module light enough
to take SIGINT and SIGTERM before anything heavy is imported.

Importing a node's module loads numpy, rclpy and the messages, franky. A signal in the middle of that would end it
in a KeyboardInterrupt traceback, or, raised inside a pybind11 module's initialisation (franky), in a misleading
"ImportError: initialization failed". So a console script imports this module alone, which catches both signals,
then imports the node's module and calls its `main()`. A signal that arrives before `run_node` (ros/spin.py) takes
the signals over ends the process with one log line naming what it interrupted, and exit status 0: nothing has
started that needs stopping. From then on the node's own handling applies (ros/startup.py).

`python -m mambavla.ros.entry NODE [--ros-args ...]` does the same for a node started by module name rather than by
its script.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time

NODES = ("policy_node", "controller_node", "sim_node", "recorder_node")


def _outermost_import(frame) -> str:
    """The top-level package of the outermost module, other than ours, whose import `frame` is inside ('' if
    none): 'franky' while franky's extension imports numpy."""
    modules = []
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            modules.append(frame.f_globals.get("__name__", ""))
        frame = frame.f_back
    for name in reversed(modules):
        package = name.partition(".")[0]
        if package not in ("", "mambavla", "__main__"):
            return package
    return ""


class _Starting:
    """Signal handler of a node that is still importing or starting ROS: say so, and leave."""

    def __init__(self, node: str):
        self.node = node
        self.module = f"mambavla.ros.{node}"
        self.importing = True

    def doing(self, frame) -> str:
        if not self.importing:
            return "initialising ROS"
        package = _outermost_import(frame)
        return f"importing {self.module}" + (f" ({package})" if package else "")

    def leave(self, signum, frame) -> None:
        # the format of rclpy's console log, which is not imported yet
        line = (f"[INFO] [{time.time():.9f}] [{self.node}]: stopped by {signal.Signals(signum).name} while "
                f"{self.doing(frame)}: leaving before the node started\n")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, RuntimeError, ValueError):  # a write the signal interrupted, or a closed stream
                pass
        os.write(2, line.encode())
        os._exit(0)


def run(node: str) -> None:
    """Import `mambavla.ros.<node>` and run its `main()`, leaving cleanly on a signal before the node is up."""
    if node not in NODES:
        raise SystemExit(f"unknown node {node!r}: one of {', '.join(NODES)}")
    starting = _Starting(node)
    signal.signal(signal.SIGINT, starting.leave)
    signal.signal(signal.SIGTERM, starting.leave)
    module = importlib.import_module(starting.module)
    starting.importing = False
    module.main()


def policy_node() -> None:
    run("policy_node")


def controller_node() -> None:
    run("controller_node")


def sim_node() -> None:
    run("sim_node")


def recorder_node() -> None:
    run("recorder_node")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: python -m mambavla.ros.entry NODE [--ros-args ...]; NODE: one of {', '.join(NODES)}")
    node_name = sys.argv.pop(1)  # the node's own arguments follow, as rclpy.init reads them from sys.argv
    run(node_name)
