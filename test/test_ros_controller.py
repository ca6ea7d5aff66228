"""controller_node over Fast DDS against the simulated FR3 (sim_node: franky-sim on loopback) with real
franky: chunks move the arm, bad chunks never do, the watchdog holds then stops, services, faults."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ros_harness import TIMEOUT, NodeProcess, Probe, chunk_message, line_rows
from std_srvs.srv import Trigger

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

CTRL = "mambavla/controller_node"
HOLD_AFTER, STOP_AFTER = 1.0, 3.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    logs = tmp_path_factory.mktemp("controller")
    probe = Probe("controller_probe")
    sim = NodeProcess("sim_node", ["sim_node.yaml"], {"camera_rate_hz": 1.0, "camera_size": [32, 32]}, logs / "sim.log")
    processes = [sim]
    try:
        task = probe.wait_for(lambda: probe.task, "sim_node's /sim/task")
        ctrl = NodeProcess("controller_node", ["controller.yaml", "controller_sim.yaml"],
                           {"robot_ip": task["robot_ip"], "hold_after": HOLD_AFTER, "stop_after": STOP_AFTER,
                            "diagnostics_rate_hz": 10.0}, logs / "controller.log")
        processes.append(ctrl)
        probe.wait_status(CTRL, lambda s: s["state"] == "IDLE", "IDLE after enable_on_start")
        yield probe, sim, ctrl
    finally:
        for proc in reversed(processes):
            proc.stop()
        probe.close()


def call(probe: Probe, service: str) -> Trigger.Response:
    client = probe.node.create_client(Trigger, f"/controller_node/{service}")
    assert client.wait_for_service(timeout_sec=TIMEOUT)
    future = client.call_async(Trigger.Request())
    probe.wait_for(future.done, f"~/{service} response")
    probe.node.destroy_client(client)
    return future.result()


def settle(probe: Probe) -> None:
    """Wait until the arm has finished the previous test's motion (moves < 1 mm in 0.3 s)."""
    def still():
        a, _ = probe.pose()
        time.sleep(0.3)
        return np.linalg.norm(probe.pose()[0] - a) < 0.001
    probe.wait_for(still, "the arm to come to rest")


def stream_line(probe: Probe, velocity: np.ndarray, seconds: float, period: float = 0.3, gripper: float = 0.0):
    """Publish a chunk every `period` s continuing a straight line from the pose at the first chunk."""
    start_p, quat = probe.pose()
    t_start = probe.now()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = probe.now()
        origin = start_p + (now - t_start) * np.asarray(velocity)
        probe.chunk_pub.publish(chunk_message(line_rows(origin, quat, velocity, gripper=gripper), now))
        time.sleep(period)
    return start_p, start_p + (probe.now() - t_start) * np.asarray(velocity)


def test_chunks_move_the_end_effector_toward_the_commanded_targets(stack):
    probe, _, _ = stack
    start, commanded = stream_line(probe, np.array([0.0, 0.05, -0.03]), seconds=2.0)
    status = probe.wait_status(CTRL, lambda s: s["state"] == "ACTIVE", "ACTIVE while chunks stream")
    assert int(status["chunks_accepted"]) > 0
    time.sleep(0.5)
    reached, _ = probe.pose()
    moved, wanted = reached - start, commanded - start
    assert np.linalg.norm(wanted) > 0.08
    # the arm covered most of the commanded line, in the commanded direction
    assert np.dot(moved, wanted) / np.linalg.norm(wanted) > 0.7 * np.linalg.norm(wanted)
    assert np.linalg.norm(reached - commanded) < 0.03
    rate = float(probe.latest(CTRL)["target_rate_hz"])
    assert 50.0 < rate < 150.0  # streaming at the configured 100 Hz (loose: shared CI cores)


def test_delta_chunks_are_relative_to_the_pose_at_the_observation_time(stack):
    probe, _, _ = stack
    settle(probe)
    start, _ = probe.pose()
    rows = np.zeros((16, 7))
    rows[:, 1] = np.linspace(0.0, 0.03, 16)  # 3 cm along +y over 0.75 s, relative to the observed pose
    probe.chunk_pub.publish(chunk_message(rows, probe.now(), frame_id="fr3_link0/ee_at_stamp"))
    status = probe.wait_status(CTRL, lambda s: s["state"] == "ACTIVE", "ACTIVE on the delta chunk")
    assert status["last_rejection"] == "" or int(status["chunks_accepted"]) > 0
    settle(probe)
    moved = probe.pose()[0] - start
    assert moved[1] == pytest.approx(0.03, abs=0.008) and abs(moved[0]) < 0.008 and abs(moved[2]) < 0.008


def test_the_gripper_column_closes_and_opens_the_hand(stack):
    probe, _, _ = stack
    probe.wait_for(lambda: probe.finger_width > 0.07, "the hand to start open")
    stream_line(probe, np.zeros(3), seconds=2.0, gripper=1.0)
    probe.wait_for(lambda: probe.finger_width < 0.03, "the hand to close")
    assert float(probe.latest(CTRL)["gripper_width"]) < 0.03
    stream_line(probe, np.zeros(3), seconds=2.0, gripper=0.0)
    probe.wait_for(lambda: probe.finger_width > 0.07, "the hand to open again")


BAD_CHUNKS = {
    "nan": (lambda rows, now: chunk_message(np.where(np.arange(7) == 0, np.nan, rows), now), "non-finite"),
    "inf": (lambda rows, now: chunk_message(np.where(np.arange(7) == 2, np.inf, rows), now), "non-finite"),
    "outside-workspace": (lambda rows, now: chunk_message(rows + np.array([0, 0, -0.6, 0, 0, 0, 0]), now), "outside workspace"),
    "huge-jump": (lambda rows, now: chunk_message(rows + (np.arange(len(rows)) >= 8)[:, None] * np.array([0, 0.3, 0, 0, 0, 0, 0]), now), "jump"),
    "wrong-names": (lambda rows, now: chunk_message(rows, now, names=("a", "b", "c", "d", "e", "f", "g")), "action names"),
    "far-past": (lambda rows, now: chunk_message(rows, now - 3600.0), "stale"),
    "far-future": (lambda rows, now: chunk_message(rows, now + 3600.0), "future"),
    "empty": (lambda rows, now: chunk_message(rows[:0], now), "no points"),
    "non-monotonic": (lambda rows, now: _non_monotonic(rows, now), "strictly increasing"),
    "short-row": (lambda rows, now: _short_row(rows, now), "positions for"),
    "unknown-frame": (lambda rows, now: chunk_message(rows, now, frame_id="camera"), "frame_id"),
}


def _non_monotonic(rows, now):
    msg = chunk_message(rows, now)
    msg.points[3].time_from_start, msg.points[4].time_from_start = msg.points[4].time_from_start, msg.points[3].time_from_start
    return msg


def _short_row(rows, now):
    msg = chunk_message(rows, now)
    msg.points[2].positions = msg.points[2].positions[:5]
    return msg


@pytest.mark.parametrize("case", list(BAD_CHUNKS))
def test_bad_chunks_are_rejected_with_a_reason_and_never_move_the_arm(stack, case):
    probe, _, ctrl = stack
    make, fragment = BAD_CHUNKS[case]
    settle(probe)
    if probe.latest(CTRL)["state"] == "STOPPED":  # the watchdog stopped it during earlier cases
        assert call(probe, "enable").success
    probe.wait_status(CTRL, lambda s: s["state"] in ("IDLE", "ACTIVE", "HOLDING"), "tracking")
    before = int(probe.latest(CTRL).get("chunks_rejected", 0))
    start, quat = probe.pose()
    probe.chunk_pub.publish(make(line_rows(start, quat, np.zeros(3)), probe.now()))
    status = probe.wait_status(CTRL, lambda s: int(s["chunks_rejected"]) > before, "the rejection")
    assert fragment in status["last_rejection"], status["last_rejection"]
    time.sleep(0.3)
    after, _ = probe.pose()
    assert np.linalg.norm(after - start) < 0.005
    assert ctrl.alive and probe.latest(CTRL)["state"] != "ERROR"


def test_watchdog_holds_the_pose_then_stops(stack):
    probe, _, _ = stack
    if probe.latest(CTRL)["state"] == "STOPPED":
        assert call(probe, "enable").success
    stream_line(probe, np.array([0.0, -0.05, 0.0]), seconds=1.0)
    probe.wait_status(CTRL, lambda s: s["state"] == "ACTIVE", "ACTIVE")
    holding = probe.wait_status(CTRL, lambda s: s["state"] == "HOLDING", "HOLDING", timeout=HOLD_AFTER + 10.0)
    assert "hold_after" in holding["reason"]
    held, _ = probe.pose()
    drift = []
    while probe.latest(CTRL)["state"] == "HOLDING":
        drift.append(np.linalg.norm(probe.pose()[0] - held))
        time.sleep(0.05)
    stopped = probe.latest(CTRL)
    assert stopped["state"] == "STOPPED" and "stop_after" in stopped["reason"], stopped["reason"]
    assert max(drift) < 0.005  # holds within 5 mm
    # stopped: chunks are refused until ~/enable
    start, quat = probe.pose()
    before = int(probe.latest(CTRL)["chunks_rejected"])
    probe.chunk_pub.publish(chunk_message(line_rows(start, quat, np.zeros(3)), probe.now()))
    status = probe.wait_status(CTRL, lambda s: int(s["chunks_rejected"]) > before, "rejection while STOPPED")
    assert "STOPPED" in status["last_rejection"]
    assert call(probe, "enable").success
    probe.wait_status(CTRL, lambda s: s["state"] == "IDLE", "IDLE after ~/enable")


def test_stop_enable_and_recover_services(stack):
    probe, _, _ = stack
    response = call(probe, "stop")
    assert response.success
    probe.wait_status(CTRL, lambda s: s["state"] == "STOPPED", "STOPPED after ~/stop")
    response = call(probe, "recover")
    assert response.success and "enable" in response.message
    response = call(probe, "enable")
    assert response.success
    probe.wait_status(CTRL, lambda s: s["state"] == "IDLE", "IDLE after ~/enable")
    assert "already" in call(probe, "enable").message


def test_losing_the_robot_is_reported_as_an_error_not_ignored(stack):
    probe, sim, ctrl = stack  # last test of the module: it takes the simulated robot away
    sim.stop()
    status = probe.wait_status(CTRL, lambda s: s["state"] == "ERROR", "ERROR after the robot vanished")
    assert status["franky_error"] or "franky" in status["reason"]
    assert ctrl.alive
    assert not call(probe, "enable").success
