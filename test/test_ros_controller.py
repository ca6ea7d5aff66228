"""controller_node over Fast DDS against the simulated FR3 (sim_node: franky-sim on loopback) with real
franky: chunks move the arm, bad chunks never do, the watchdog holds then stops, services, faults."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time

import numpy as np
import pytest
from ros_harness import TIMEOUT, NodeProcess, Probe, chunk_message, line_rows
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

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


def stream_line(probe: Probe, velocity: np.ndarray, seconds: float, period: float = 0.3, gripper: float = 0.0,
                sent: list | None = None):
    """Publish a chunk every `period` s continuing a straight line from the pose at the first chunk (their stamps
    appended to `sent`)."""
    start_p, quat = probe.pose()
    t_start = probe.now()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = probe.now()
        origin = start_p + (now - t_start) * np.asarray(velocity)
        probe.chunk_pub.publish(chunk_message(line_rows(origin, quat, velocity, gripper=gripper), now))
        if sent is not None:
            sent.append(now)
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
    from geometry_msgs.msg import PoseStamped

    from mambavla.ros.qos import STATE_QOS

    probe, _, _ = stack
    settle(probe)
    if probe.latest(CTRL)["state"] == "STOPPED":
        assert call(probe, "enable").success
    targets = []
    sub = probe.node.create_subscription(PoseStamped, "/controller_node/target_pose",
                                         lambda m: targets.append([m.pose.position.x, m.pose.position.y,
                                                                   m.pose.position.z]),
                                         STATE_QOS)
    start, _ = probe.pose()
    rows = np.zeros((16, 7))
    rows[:, 1] = np.linspace(0.0, 0.03, 16)  # 3 cm along +y over 0.75 s, relative to the observed pose
    before = int(probe.latest(CTRL)["chunks_accepted"])
    probe.chunk_pub.publish(chunk_message(rows, probe.now(), frame_id="fr3_link0/ee_at_stamp"))
    probe.wait_status(CTRL, lambda s: int(s["chunks_accepted"]) > before, "the delta chunk accepted")
    time.sleep(1.2)  # the chunk runs out; the watchdog then holds wherever a lagging arm got to
    probe.node.destroy_subscription(sub)
    # the commanded path went 3 cm along +y from the observed pose, and nowhere else
    offsets = np.array(targets) - start
    k = int(np.argmax(offsets[:, 1]))
    assert offsets[k, 1] == pytest.approx(0.03, abs=0.004)
    assert abs(offsets[k, 0]) < 0.004 and abs(offsets[k, 2]) < 0.004
    moved = probe.pose()[0] - start
    assert moved[1] > 0.01 and abs(moved[0]) < 0.008 and abs(moved[2]) < 0.008


def test_the_gripper_column_closes_and_opens_the_hand(stack):
    probe, _, _ = stack
    probe.wait_for(lambda: probe.finger_width > 0.07, "the hand to start open")
    stream_line(probe, np.zeros(3), seconds=2.0, gripper=1.0)
    probe.wait_for(lambda: probe.finger_width < 0.03, "the hand to close")
    assert float(probe.latest(CTRL)["gripper_width"]) < 0.03
    if probe.latest(CTRL)["state"] == "STOPPED":  # a slow grasp outlasted stop_after
        assert call(probe, "enable").success
    stream_line(probe, np.zeros(3), seconds=2.0, gripper=0.0)
    probe.wait_for(lambda: probe.finger_width > 0.07, "the hand to open again")


BAD_CHUNKS = {
    "nan": (lambda rows, now: chunk_message(np.where(np.arange(7) == 0, np.nan, rows), now), "non-finite"),
    "inf": (lambda rows, now: chunk_message(np.where(np.arange(7) == 2, np.inf, rows), now), "non-finite"),
    "outside-workspace": (lambda rows, now: chunk_message(rows + np.array([0, 0, -0.6, 0, 0, 0, 0]), now),
                          "outside workspace"),
    "huge-jump": (lambda rows, now: chunk_message(
        rows + (np.arange(len(rows)) >= 8)[:, None] * np.array([0, 0.3, 0, 0, 0, 0, 0]), now), "jump"),
    "wrong-names": (lambda rows, now: chunk_message(rows, now, names=("a", "b", "c", "d", "e", "f", "g")),
                    "action names"),
    "far-past": (lambda rows, now: chunk_message(rows, now - 3600.0), "stale"),
    "far-future": (lambda rows, now: chunk_message(rows, now + 3600.0), "future"),
    "empty": (lambda rows, now: chunk_message(rows[:0], now), "no points"),
    "non-monotonic": (lambda rows, now: _non_monotonic(rows, now), "strictly increasing"),
    "short-row": (lambda rows, now: _short_row(rows, now), "positions for"),
    "unknown-frame": (lambda rows, now: chunk_message(rows, now, frame_id="camera"), "frame_id"),
}


def _non_monotonic(rows, now):
    msg = chunk_message(rows, now)
    p3, p4 = msg.points[3], msg.points[4]
    p3.time_from_start, p4.time_from_start = p4.time_from_start, p3.time_from_start
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
    print(f"\nwatchdog: HOLDING held the arm within {max(drift) * 1e3:.1f} mm for {len(drift) * 0.05:.1f} s")
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


def call_async(probe: Probe, service: str):
    client = probe.node.create_client(Trigger, f"/controller_node/{service}")
    assert client.wait_for_service(timeout_sec=TIMEOUT)
    return client, client.call_async(Trigger.Request())


def pose_gaps(probe: Probe, since: float) -> float:
    with probe.lock:
        times = [t for t, _, _ in probe.poses if t > since]
    return max(np.diff(times)) if len(times) > 1 else float("inf")


def test_concurrent_service_calls_are_all_answered_and_state_keeps_flowing(stack):
    probe, _, _ = stack
    if probe.latest(CTRL)["state"] != "IDLE":  # a franky recovery call (while STOPPED) pauses state reads
        assert call(probe, "enable").success
    t0 = time.monotonic()
    calls = [call_async(probe, name) for name in ("recover", "enable", "recover") * 10]  # 30 at once
    probe.wait_for(lambda: all(f.done() for _, f in calls), "an answer to all 30 requests", timeout=60.0)
    for client, _ in calls:
        probe.node.destroy_client(client)
    assert all(f.result() is not None for _, f in calls)
    assert pose_gaps(probe, t0) < 0.5  # /ee_pose kept coming while requests waited
    probe.wait_status(CTRL, lambda s: s["state"] == "IDLE", "IDLE after the enables")


def test_parameters_read_once_are_read_only(stack):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    probe, _, _ = stack
    client = probe.node.create_client(SetParameters, "/controller_node/set_parameters")
    assert client.wait_for_service(timeout_sec=TIMEOUT)
    value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=5.0)
    future = client.call_async(SetParameters.Request(parameters=[Parameter(name="max_linear_speed", value=value)]))
    probe.wait_for(future.done, "set_parameters response")
    probe.node.destroy_client(client)
    result = future.result().results[0]
    assert not result.successful and "read-only" in result.reason  # `ros2 param set` must not report success


def worst_period_ms(probe: Probe, since: float) -> float:
    """Median over seconds of each second's longest control period, from the diagnostics after `since`
    (the median: one stall of this loaded machine is not the flood's doing)."""
    with probe.lock:
        values = [float(v["target_max_period_ms"]) for t, v in probe.status_history[CTRL] if t > since]
    return float(np.median(values))


@contextlib.contextmanager
def flooding(probe: Probe, msg_type, topic: str, message):
    """A second publisher sends `message` on `topic` every 2 ms while the block runs (about 500 per second, yet
    leaving the valid publisher's thread the GIL); yields [messages sent so far]."""
    pub = probe.node.create_publisher(msg_type, topic, 2)
    sent, stop = [0], threading.Event()

    def flood():
        while not stop.is_set():
            pub.publish(message)
            sent[0] += 1
            time.sleep(0.002)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        yield sent
    finally:
        stop.set()
        flooder.join()
        probe.node.destroy_publisher(pub)


def test_a_chunk_flood_from_a_second_publisher_does_not_slow_the_control_loop(stack):
    probe, _, _ = stack
    settle(probe)
    if probe.latest(CTRL)["state"] == "STOPPED":
        assert call(probe, "enable").success
    t0 = time.monotonic()
    stream_line(probe, np.zeros(3), seconds=3.0, period=0.2)  # the valid 5 Hz stream alone
    baseline = worst_period_ms(probe, t0 + 1.2)
    garbage = chunk_message(np.full((16, 7), 9.0), 0.0)  # stale and outside the workspace: always rejected
    with flooding(probe, JointTrajectory, "/action_chunk", garbage) as sent:
        status = probe.wait_status(CTRL, lambda s: int(s["chunk_publishers"]) >= 2, "two chunk publishers reported")
        assert "publishers" in status["message"] and status["level"] >= 1
        before = probe.latest(CTRL)
        t1 = time.monotonic()
        valid: list = []
        stream_line(probe, np.zeros(3), seconds=4.0, period=0.2, sent=valid)  # the valid stream beside the flood
        flooded = worst_period_ms(probe, t1 + 1.2)
        time.sleep(0.5)  # the diagnostics count what the node took up to now
        after = probe.latest(CTRL)
        with probe.lock:
            states = [v["state"] for t, v in probe.status_history[CTRL] if t > t1 + 0.5]
    rejected = int(after["chunks_rejected"]) - int(before["chunks_rejected"])
    accepted = int(after["chunks_accepted"]) - int(before["chunks_accepted"])
    print(f"flood: {sent[0]} sent, {rejected} rejected in ~4 s ({after['rejections_by_kind']}); "
          f"{accepted} of {len(valid)} "
          f"valid chunks accepted; longest control period per second (median) {baseline:.0f} ms alone, "
          f"{flooded:.0f} ms flooded")
    assert rejected > 200 and "rate limited" in after["rejections_by_kind"]  # the flood reached the node
    assert after["chunks_without_publisher_id"] == "0"  # rmw told the publishers apart: one budget each
    # the valid stream got through and the arm was never stopped. The flooding thread shares this process (and
    # its GIL) with the valid publisher, so on two loaded cores a few valid chunks leave late and arrive stale.
    # The control periods printed above are a measurement (docs/benchmarks.md), not a pass mark.
    assert accepted >= 0.6 * len(valid), f"{accepted} of {len(valid)} valid chunks accepted"
    assert "STOPPED" not in states and "ERROR" not in states, states


def twist_message(probe: Probe, linear, angular=(0.0, 0.0, 0.0), frame_id: str = "fr3_link0",
                  stamp: float | None = None):
    from geometry_msgs.msg import TwistStamped

    from mambavla.ros.convert import seconds_to_stamp

    msg = TwistStamped()
    msg.header.stamp, msg.header.frame_id = seconds_to_stamp(probe.now() if stamp is None else stamp), frame_id
    (msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z) = (float(v) for v in linear)
    (msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z) = (float(v) for v in angular)
    return msg


def stream_twist(probe: Probe, pub, linear, seconds: float, period: float = 0.05) -> None:
    """Publish a twist every `period` s (20 Hz, as teleop_twist_joy does) for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pub.publish(twist_message(probe, linear))
        time.sleep(period)


@pytest.fixture
def teleop(stack):
    """The controller switched to teleoperation (and back to the policy afterwards), a TwistStamped publisher."""
    from geometry_msgs.msg import TwistStamped

    from mambavla.ros.qos import COMMAND_QOS

    probe, _, _ = stack
    settle(probe)
    # from a known state: an arm the policy tests left HOLDING would be stopped by the watchdog mid-test
    call(probe, "stop")
    assert call(probe, "enable").success
    pub = probe.node.create_publisher(TwistStamped, "/teleop/twist", COMMAND_QOS)
    probe.wait_for(lambda: pub.get_subscription_count() > 0, "the controller's twist subscription")
    try:
        yield probe, pub
    finally:
        probe.node.destroy_publisher(pub)
        assert call(probe, "use_policy").success


def test_a_twist_stream_moves_the_arm_and_the_arm_stops_when_the_stream_stops(teleop):
    probe, pub = teleop
    before = int(probe.latest(CTRL)["teleop_rejected"])
    pub.publish(twist_message(probe, (0.0, 0.05, 0.0)))  # the policy drives: the twist is refused, counted
    status = probe.wait_status(CTRL, lambda s: int(s["teleop_rejected"]) > before, "the inactive source's rejection")
    assert "inactive source" in status["teleop_rejections_by_kind"]
    assert "~/use_teleop" in status["teleop_last_rejection"]
    response = call(probe, "use_teleop")
    assert response.success and "policy -> teleop" in response.message
    status = probe.wait_status(CTRL, lambda s: s["command_source"] == "teleop", "the source switch on /diagnostics")
    assert status["message"].startswith("IDLE (teleop)")
    from geometry_msgs.msg import PoseStamped

    from mambavla.ros.qos import STATE_QOS

    targets = []
    sub = probe.node.create_subscription(PoseStamped, "/controller_node/target_pose", lambda m: targets.append(
        [m.pose.position.x, m.pose.position.y, m.pose.position.z]), STATE_QOS)
    start, _ = probe.pose()
    velocity = np.array([0.0, -0.06, 0.04])
    stream_twist(probe, pub, velocity, seconds=1.5)
    assert probe.latest(CTRL)["state"] == "ACTIVE"
    # the stream stopped: the target stops teleop_command_timeout after the last twist, the watchdog then holds
    holding = probe.wait_status(CTRL, lambda s: s["state"] == "HOLDING", "HOLDING", timeout=HOLD_AFTER + 10.0)
    probe.node.destroy_subscription(sub)
    assert "no teleoperation command" in holding["reason"]
    held, _ = probe.pose()
    time.sleep(0.5)
    drift = np.linalg.norm(probe.pose()[0] - held)
    wanted = velocity * 1.5
    streamed = np.array(targets[:-5]) - start  # before the hold snapped the target onto the arm
    k = int(np.argmax(streamed @ wanted))
    moved = held - start
    print(f"\nteleop: commanded {np.round(wanted * 1e3, 1)} mm, target went {np.round(streamed[k] * 1e3, 1)} mm, "
          f"arm {np.round(moved * 1e3, 1)} mm, then {drift * 1e3:.1f} mm while held")
    # the target went the commanded way, never further than commanded (the last twist counts for up to
    # teleop_command_timeout more), and the arm followed it. It may fall short: a late tick advances the
    # target by at most max_tick_dt of motion, so a controller starved of CPU moves less, never leaps
    along = streamed[k] @ wanted / np.linalg.norm(wanted)
    assert 0.5 * np.linalg.norm(wanted) < along < 1.25 * np.linalg.norm(wanted)
    assert np.linalg.norm(np.cross(streamed[k], wanted)) / np.linalg.norm(wanted) < 0.01
    assert moved @ wanted / np.linalg.norm(wanted) > 0.5 * np.linalg.norm(wanted)
    assert drift < 0.005
    probe.wait_status(CTRL, lambda s: s["state"] == "STOPPED", "STOPPED after stop_after", timeout=STOP_AFTER + 10.0)
    assert call(probe, "enable").success


def test_bad_twists_are_rejected_and_never_move_the_arm(teleop):
    probe, pub = teleop
    assert call(probe, "use_teleop").success
    start, _ = probe.pose()
    cases = {"non-finite": twist_message(probe, (np.nan, 0.0, 0.0)),
             "too fast": twist_message(probe, (0.0, 50.0, 0.0)),
             "stale": twist_message(probe, (0.0, 0.05, 0.0), stamp=probe.now() - 3600.0),
             "frame": twist_message(probe, (0.0, 0.05, 0.0), frame_id="camera_link")}
    for kind, msg in cases.items():
        before = json.loads(probe.latest(CTRL)["teleop_rejections_by_kind"]).get(kind, 0)
        pub.publish(msg)
        probe.wait_status(CTRL, lambda s: json.loads(s["teleop_rejections_by_kind"]).get(kind, 0) > before,
                          f"the {kind} twist rejected")
    time.sleep(0.3)
    assert np.linalg.norm(probe.pose()[0] - start) < 0.003
    assert probe.latest(CTRL)["state"] == "IDLE"


def test_the_teleop_gripper_command_drives_the_hand_of_a_stopped_arm(teleop):
    from std_msgs.msg import Float64

    from mambavla.ros.qos import COMMAND_QOS

    probe, _ = teleop
    assert call(probe, "use_teleop").success
    assert call(probe, "stop").success  # kinesthetic teaching: the arm is guided by hand, not tracked
    probe.wait_status(CTRL, lambda s: s["state"] == "STOPPED", "STOPPED")
    probe.wait_for(lambda: probe.finger_width > 0.07, "the hand open")
    pub = probe.node.create_publisher(Float64, "/teleop/gripper", COMMAND_QOS)
    try:
        probe.wait_for(lambda: pub.get_subscription_count() > 0, "the controller's gripper subscription")
        pub.publish(Float64(data=1.0))
        probe.wait_for(lambda: probe.finger_width < 0.03, "the hand to close")
        pub.publish(Float64(data=0.0))
        probe.wait_for(lambda: probe.finger_width > 0.07, "the hand to open after gripper_open_delay")
    finally:
        probe.node.destroy_publisher(pub)
    assert probe.latest(CTRL)["state"] == "STOPPED"
    assert call(probe, "enable").success


def test_a_twist_counts_from_when_the_reader_received_it_not_from_when_a_callback_took_it():
    from mambavla.ros.controller_node import received_at

    waited = time.monotonic() - received_at({"received_timestamp": time.time_ns() - 400_000_000})
    assert waited == pytest.approx(0.4, abs=0.05)  # 0.4 s in the reader's history: older than the 0.25 s timeout
    assert abs(time.monotonic() - received_at({"received_timestamp": 0})) < 0.05  # no receipt time: the take time
    assert abs(time.monotonic() - received_at({"received_timestamp": time.time_ns() + 10**9})) < 0.05  # clock step


def test_a_twist_flood_from_a_second_publisher_neither_slows_the_loop_nor_starves_the_valid_stream(teleop):
    from geometry_msgs.msg import TwistStamped

    probe, pub = teleop
    assert call(probe, "use_teleop").success
    t0 = time.monotonic()
    stream_twist(probe, pub, np.zeros(3), seconds=3.0)  # the valid 20 Hz stream alone (standing still)
    baseline = worst_period_ms(probe, t0 + 1.2)
    garbage = twist_message(probe, (np.nan, 1e9, 0.0))
    states = []
    with flooding(probe, TwistStamped, "/teleop/twist", garbage) as sent:
        rejected = int(probe.latest(CTRL)["teleop_rejected"])
        t1 = time.monotonic()
        end = t1 + 4.0
        while time.monotonic() < end:
            pub.publish(twist_message(probe, np.zeros(3)))
            states.append(probe.latest(CTRL)["state"])
            time.sleep(0.05)
        flooded = worst_period_ms(probe, t1 + 1.2)
        status = probe.latest(CTRL)
    rejected = int(status["teleop_rejected"]) - rejected
    kinds = json.loads(status["teleop_rejections_by_kind"])
    print(f"\ntwist flood: {sent[0]} sent, {rejected} rejected in ~4 s ({kinds}); longest control period per second "
          f"(median) {baseline:.0f} ms alone, {flooded:.0f} ms flooded")
    assert rejected > 200 and kinds.get("rate limited", 0) > 0  # the flood reached the node, its excess unread
    assert set(states[20:]) == {"ACTIVE"}  # the valid stream kept the arm driven: never HOLDING
    # the control periods are printed, not asserted: a timing on two shared cores is a measurement (the figures
    # with their conditions are in docs/recording.md), not a pass/fail rule


def test_a_frozen_robot_neither_blocks_services_nor_publishes_a_stale_pose(stack):
    probe, sim, ctrl = stack
    settle(probe)
    sim.process.send_signal(signal.SIGSTOP)  # franky-sim frozen: robot calls block
    try:
        time.sleep(1.0)
        response = call(probe, "enable")  # answered, not left waiting on the frozen robot
        time.sleep(0.5)
        with probe.lock:
            fresh = [t for t, _, _ in probe.poses if t > time.monotonic() - 0.4]
    finally:
        sim.process.send_signal(signal.SIGCONT)
    assert response is not None and response.message
    assert not fresh, "a stale pose was published as fresh while the robot was frozen"
    assert ctrl.alive
    probe.wait_for(lambda: pose_gaps(probe, time.monotonic() - 1.0) < 0.5, "poses again after the robot resumed",
                   timeout=60.0)


def test_losing_the_robot_is_reported_as_an_error_not_ignored(stack):
    probe, sim, ctrl = stack  # takes the simulated robot away, and brings it back at the same address
    sim.stop()
    status = probe.wait_status(CTRL, lambda s: s["state"] == "ERROR", "ERROR after the robot vanished")
    assert status["franky_error"] or "franky" in status["reason"]
    assert ctrl.alive
    assert not call(probe, "enable").success
    time.sleep(1.0)
    with probe.lock:
        recent = [t for t, _, _ in probe.poses if t > time.monotonic() - 0.8]
    assert not recent, "the last pose kept being published while disconnected"


def test_a_robot_that_comes_back_keeps_error_until_recover(stack, tmp_path):
    probe, sim, ctrl = stack
    assert not sim.alive
    ip = probe.task["robot_ip"]
    back = NodeProcess("sim_node", ["sim_node.yaml"], {"camera_rate_hz": 1.0, "camera_size": [32, 32], "host": ip},
                       tmp_path / "sim2.log")
    try:
        status = probe.wait_status(CTRL, lambda s: "reconnected" in s["reason"], "the reconnection")
        assert status["state"] == "ERROR"
        time.sleep(1.0)
        assert probe.latest(CTRL)["state"] == "ERROR"
        assert not call(probe, "enable").success  # README: faults keep ERROR until ~/recover
        assert call(probe, "recover").success
        assert call(probe, "enable").success
        probe.wait_status(CTRL, lambda s: s["state"] == "IDLE", "IDLE after recover + enable")
    finally:
        back.stop()


def test_every_controller_number_is_declared_once_with_its_owners_default():
    """controller_node declares each limit/gain with the default of the dataclass that owns it, and
    config/controller.yaml states each one (a number the node silently ignored would be a trap)."""
    import yaml

    from mambavla.control.config import config_path, controller_defaults
    from mambavla.ros.controller_node import PARAMETERS

    defaults = controller_defaults()
    assert set(defaults) == set(PARAMETERS)
    assert defaults["max_linear_speed"] == 0.25 and defaults["hold_after"] == 1.0 and defaults["rate_hz"] == 200.0
    shipped = yaml.safe_load(config_path("controller.yaml").read_text())["controller_node"]["ros__parameters"]
    assert set(defaults) - {"action_names"} <= set(shipped)
