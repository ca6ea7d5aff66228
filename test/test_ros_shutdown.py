"""Ctrl-C under launch: SIGINT, then launch's SIGTERM (or a second Ctrl-C) while the node is shutting
down. Every node exits cleanly, within launch's 5 s SIGTERM timeout, and the controller's stop of
the arm completes."""

from __future__ import annotations

import signal
import time

import pytest
from ros_harness import NodeProcess, Probe

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

CTRL = "mambavla/controller_node"
POLICY = "mambavla/policy_node"


def interrupt_twice(node: NodeProcess) -> tuple[int, float]:
    """SIGINT, then SIGTERM 0.3 s later (mid-shutdown); the exit code and the seconds it took."""
    t0 = time.monotonic()
    node.process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    if node.alive:
        node.process.send_signal(signal.SIGTERM)
    code = node.process.wait(timeout=15.0)
    return code, time.monotonic() - t0


def test_nodes_exit_cleanly_and_the_controlled_stop_completes_on_ctrl_c(tmp_path):
    probe = Probe("shutdown_probe")
    sim = NodeProcess("sim_node", ["sim_node.yaml"], {"camera_rate_hz": 1.0, "camera_size": [32, 32]}, tmp_path / "sim.log")
    ctrl = policy = None
    try:
        task = probe.wait_for(lambda: probe.task, "sim_node's /sim/task")
        ctrl = NodeProcess("controller_node", ["controller.yaml", "controller_sim.yaml"],
                           {"robot_ip": task["robot_ip"], "diagnostics_rate_hz": 10.0}, tmp_path / "controller.log")
        policy = NodeProcess("policy_node", ["policy.yaml", "policy_sim.yaml"], {"preset": "tiny"}, tmp_path / "policy.log")
        probe.wait_status(CTRL, lambda s: s["state"] == "IDLE", "tracking (IDLE)")
        probe.wait_status(POLICY, lambda s: s["state"] == "WAITING", "the policy loaded", timeout=300.0)
        for node, log in ((ctrl, "controller.log"), (policy, "policy.log")):
            code, seconds = interrupt_twice(node)
            text = (tmp_path / log).read_text()
            assert code == 0, f"{log}: exit {code}\n{text[-2000:]}"
            assert seconds < 5.0, f"{log}: took {seconds:.1f} s (launch sends SIGTERM at 5 s)"
            assert "Traceback" not in text, text[-2000:]
        assert "shutdown: stopped" in (tmp_path / "controller.log").read_text()  # the arm was brought to rest
    finally:
        for node in (policy, ctrl, sim):
            if node is not None:
                node.stop()
        probe.close()
