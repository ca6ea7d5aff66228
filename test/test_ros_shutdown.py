"""Ctrl-C under launch: SIGINT, then launch's SIGTERM (or a second Ctrl-C) while the node is shutting
down. Every node exits cleanly, within launch's 5 s SIGTERM timeout, and the controller's stop of
the arm completes. A node stopped while still starting (loading its checkpoint, connecting to a robot
that does not answer) leaves on the first SIGINT and says what it was doing."""

from __future__ import annotations

import random
import signal
import socket
import time

import pytest
from ros_harness import NodeProcess, Probe

from mambavla.model.checkpoint import shipped_checkpoint

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
    sim = NodeProcess("sim_node", ["sim_node.yaml"], {"camera_rate_hz": 1.0, "camera_size": [32, 32]},
                      tmp_path / "sim.log")
    ctrl = policy = None
    try:
        task = probe.wait_for(lambda: probe.task, "sim_node's /sim/task")
        ctrl = NodeProcess("controller_node", ["controller.yaml", "controller_sim.yaml"],
                           {"robot_ip": task["robot_ip"], "diagnostics_rate_hz": 10.0}, tmp_path / "controller.log")
        policy = NodeProcess("policy_node", ["policy.yaml", "policy_sim.yaml"], {"preset": "tiny"},
                             tmp_path / "policy.log")
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


def interrupt_once(node: NodeProcess) -> tuple[int, float]:
    """One SIGINT; the exit code and the seconds it took (a node still running after 15 s is killed)."""
    t0 = time.monotonic()
    node.process.send_signal(signal.SIGINT)
    try:
        code = node.process.wait(timeout=15.0)
    except Exception:
        node.process.kill()
        code = node.process.wait()
    return code, time.monotonic() - t0


def silent_robot() -> socket.socket:
    """A free loopback address whose libfranka port accepts TCP connections and never answers: franky.Robot()
    blocks there, as it does for an arm whose FCI does not respond."""
    rng = random.SystemRandom()
    for _ in range(200):
        server = socket.socket()
        try:
            server.bind((f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}", 1337))
        except OSError:
            server.close()
            continue
        server.listen(8)
        return server
    raise RuntimeError("no free loopback address")


def test_policy_node_stopped_while_loading_its_checkpoint_leaves_at_once_and_says_why(tmp_path):
    probe = Probe("loading_probe")
    checkpoint = str(shipped_checkpoint())
    policy = NodeProcess("policy_node", ["policy.yaml"], {"checkpoint": checkpoint, "device": "cpu",
                                                          "diagnostics_rate_hz": 20.0}, tmp_path / "policy.log")
    try:
        probe.wait_status(POLICY, lambda s: s["state"] == "LOADING", "loading the checkpoint")
        code, seconds = interrupt_once(policy)
        text = (tmp_path / "policy.log").read_text()
        assert code == 0, f"exit {code}\n{text[-2000:]}"
        assert seconds < 3.0, f"took {seconds:.1f} s after SIGINT\n{text[-2000:]}"
        assert f"stopped by SIGINT while loading the policy (checkpoint {checkpoint})" in text, text[-2000:]
        assert "Traceback" not in text and "policy: checkpoint" not in text, text[-2000:]
    finally:
        policy.stop()
        probe.close()


def test_controller_stopped_while_connecting_to_a_silent_robot_leaves_at_once_and_says_why(tmp_path):
    probe = Probe("connecting_probe")
    robot = silent_robot()
    address = robot.getsockname()[0]
    ctrl = NodeProcess("controller_node", ["controller.yaml", "controller_sim.yaml"],
                       {"robot_ip": address, "diagnostics_rate_hz": 10.0}, tmp_path / "controller.log")
    try:
        probe.wait_status(CTRL, lambda s: s.get("robot_ip") == address, "diagnostics while connecting")
        robot.settimeout(60.0)
        connection, _ = robot.accept()  # franky's connection is open: it now waits for an answer that never comes
        code, seconds = interrupt_once(ctrl)
        connection.close()
        text = (tmp_path / "controller.log").read_text()
        assert code == 0, f"exit {code}\n{text[-2000:]}"
        assert seconds < 3.0, f"took {seconds:.1f} s after SIGINT\n{text[-2000:]}"
        assert f"stopped by SIGINT while connecting to the robot at {address}" in text, text[-2000:]
        assert "Traceback" not in text, text[-2000:]
    finally:
        ctrl.stop()
        robot.close()
        probe.close()
