"""Ctrl-C under launch: SIGINT, then launch's SIGTERM (or a second Ctrl-C) while the node is shutting
down. Every node exits cleanly, within launch's 5 s SIGTERM timeout, and the controller's stop of
the arm completes. A node stopped while still starting (importing its modules, loading its checkpoint,
connecting to a robot that does not answer) leaves on the first SIGINT and says what it was doing. A node
that refuses its parameters exits with status 1 and one line saying which."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ros_harness import NodeProcess, Probe

from mambavla.control.config import config_path
from mambavla.model.checkpoint import shipped_checkpoint

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

CTRL = "mambavla/controller_node"
POLICY = "mambavla/policy_node"
LAUNCH_SIGTERM_AFTER = 5.0  # s: launch escalates a SIGINT that did not end a node to SIGTERM


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
            assert seconds < LAUNCH_SIGTERM_AFTER, f"{log}: took {seconds:.1f} s (launch sends SIGTERM then)"
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
        assert seconds < LAUNCH_SIGTERM_AFTER, f"took {seconds:.1f} s after SIGINT\n{text[-2000:]}"
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
        assert seconds < LAUNCH_SIGTERM_AFTER, f"took {seconds:.1f} s after SIGINT\n{text[-2000:]}"
        assert f"stopped by SIGINT while connecting to the robot at {address}" in text, text[-2000:]
        assert "Traceback" not in text, text[-2000:]
    finally:
        ctrl.stop()
        robot.close()
        probe.close()


def console_script(node: str) -> str:
    """The node's installed console script, what `ros2 run` and launch start."""
    path = Path(sys.executable).parent / node
    if not path.exists():
        pytest.fail(f"{path} is missing: install the package (pip install --no-deps --no-build-isolation -e .)")
    return str(path)


def importing(process: subprocess.Popen) -> bool:
    """numpy's extension is loaded: the process is past the interpreter's start and imports the node's module (each
    node module imports numpy, directly or through its messages, well before its last import)."""
    try:
        return "_multiarray_umath" in Path(f"/proc/{process.pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


def signal_at(process: subprocess.Popen, delay: float, sig: signal.Signals) -> tuple[int, float]:
    """Send `sig` `delay` s after the node started importing its module; the exit code and the seconds it took (a
    node still running after 15 s is killed). Counted from the import, not from the process start: the interpreter's
    own start (site-packages' .pth files, ros-wheels-bootstrapper's re-exec) runs before any code of ours can take a
    signal, and on a loaded machine it can take longer than a fixed delay."""
    end = time.monotonic() + 60.0
    while not importing(process):
        assert process.poll() is None, "the node ended before it imported numpy"
        assert time.monotonic() < end, "the node did not import numpy within 60 s"
        time.sleep(0.002)
    time.sleep(delay)
    t0 = time.monotonic()
    process.send_signal(sig)
    try:
        code = process.wait(timeout=15.0)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    return code, time.monotonic() - t0


@pytest.mark.parametrize("node", ["controller_node", "policy_node", "sim_node", "recorder_node"])
def test_a_node_signalled_at_any_moment_of_its_start_leaves_with_one_line_saying_why_and_status_0(node, tmp_path):
    robot = silent_robot()
    address = robot.getsockname()[0]
    # parameters as launch gives them, and the later moments (s after the import began) at which each node is
    # surely still starting: the controller waits on a robot that never answers, the policy loads the shipped
    # checkpoint (seconds on CPU), the simulator builds its workcell; the recorder is up in a fraction of a second
    setups = {"controller_node": (["controller.yaml", "controller_sim.yaml"], {"robot_ip": address}, [0.2, 0.8]),
              "policy_node": (["policy.yaml"], {"checkpoint": str(shipped_checkpoint()), "device": "cpu"},
                              [0.2, 0.8]),
              "sim_node": (["sim_node.yaml"], {"camera_rate_hz": 1.0, "camera_size": [32, 32]}, [0.2]),
              "recorder_node": ([], {"root": str(tmp_path / "recordings")}, [])}
    files, overrides, later = setups[node]
    command = [console_script(node), "--ros-args"]
    for name in files:
        command += ["--params-file", str(config_path(name))]
    for key, value in overrides.items():
        command += ["-p", f"{key}:={json.dumps(value)}"]
    moments = [(0.0, signal.SIGINT), (0.0, signal.SIGTERM)] + [(delay, signal.SIGINT) for delay in later]
    try:
        for run, (delay, sig) in enumerate(moments):
            log = tmp_path / f"{node}_{run}.log"
            with log.open("w") as out:
                process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                code, seconds = signal_at(process, delay, sig)
            text = log.read_text()
            where = f"{sig.name} {delay} s into the import: exit {code} after {seconds:.1f} s\n{text[-2000:]}"
            assert code == 0, where
            assert seconds < LAUNCH_SIGTERM_AFTER, where
            assert "Traceback" not in text and "ImportError" not in text, where
            stops = [line for line in text.splitlines() if "stopped by SIG" in line]
            assert len(stops) == 1 and f"[{node}]: stopped by {sig.name} while " in stops[0], where
            if delay == 0.0:  # sent as the import begins; on a quick machine the node may be past it already
                assert f"while importing mambavla.ros.{node}" in stops[0] or "while importing" not in stops[0], where
    finally:
        robot.close()


@pytest.mark.parametrize("node, file_text, refusal", [
    ("policy_node", 'policy_node:\n  ros__parameters:\n    devise: "cpu"\n',
     "'devise' (did you mean 'device'?) is not a policy_node parameter"),
    ("controller_node", "controller_node:\n  ros__parameters:\n    rate_hz: 5000.0\n",
     "rate_hz must be within 20..1000, got 5000.0"),
    ("controller_node", "controller_node:\n  ros__parameters:\n    workspace_mn: [0.2, -0.4, 0.0]\n",
     "'workspace_mn' (did you mean 'workspace_min'?) is not a controller_node parameter")])
def test_a_node_refusing_its_parameter_file_exits_1_with_one_line_naming_the_parameter(node, file_text, refusal,
                                                                                        tmp_path):
    params = tmp_path / "my_cell.yaml"
    params.write_text(file_text)
    command = [console_script(node), "--ros-args", "--params-file", str(config_path(f"{node.split('_')[0]}.yaml")),
               "--params-file", str(params)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text, text
    fatal = [line for line in text.splitlines() if "[FATAL]" in line]
    assert len(fatal) == 1 and f"[{node}]: cannot start: " in fatal[0] and refusal in fatal[0], text
