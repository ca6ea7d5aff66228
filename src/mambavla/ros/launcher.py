"""Start the nodes as child processes with the same parameter files the launch files use.

This is what `mambavla demo`, `mambavla bench-ros` and the tests use where no full ROS 2 install
(and so no `ros2 launch`) exists. One process per node, as `ros2 launch` does: franky-sim's 1 kHz
Python loop, rendering and inference then do not share one interpreter lock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mambavla.control.config import config_path
from mambavla.ros import entry


def _interrupt_on_parent_death() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the parent's finally-block still stops the nodes
        pass


class NodeProcess:
    """One node (`mambavla.ros.<node>`) in a child process, logging to `log_path`."""

    def __init__(self, node: str, param_files: list[str] = (), overrides: dict | None = None,
                 log_path: str | Path | None = None, env: dict | None = None):
        self.node = node
        # the nodes' console scripts start through ros/entry.py (a signal while importing ends them cleanly)
        module = ["mambavla.ros.entry", node] if node in entry.NODES else [f"mambavla.ros.{node}"]
        cmd = [sys.executable, "-u", "-m", *module, "--ros-args"]
        for name in param_files:
            cmd += ["--params-file", str(config_path(name))]
        for key, value in (overrides or {}).items():
            cmd += ["-p", f"{key}:={json.dumps(value)}"]  # JSON is YAML: strings, bools, lists survive
        self.command = cmd
        self.log_path = Path(log_path) if log_path else None
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        # Own session (a terminal's Ctrl-C reaches only the parent, which then stops the nodes in order),
        # but SIGINT when the parent dies, so no node outlives the process that started it.
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})}, start_new_session=True,
                                        preexec_fn=_interrupt_on_parent_death)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT (the node stops the arm and its threads), then SIGTERM, then SIGKILL."""
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if not self.alive:
                break
            self.process.send_signal(sig)
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        if self._log not in (subprocess.DEVNULL, None):
            self._log.close()
        return self.process.returncode


def wait_until(predicate, timeout: float, poll: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = predicate()
        if result:
            return result
        time.sleep(poll)
    return None
