"""Recording a demonstration the way it is done on the robot, in simulation: a scripted operator teleoperates
sim_node's FR3 through controller_node (TwistStamped + gripper command), recorder_node records an episode
through its services, and the bag reads back as training reads it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import TwistStamped
from ros_harness import TIMEOUT, NodeProcess, Probe
from std_msgs.msg import Float64
from std_srvs.srv import Trigger

from mambavla.ros.convert import seconds_to_stamp
from mambavla.ros.qos import COMMAND_QOS

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

CTRL, REC = "mambavla/controller_node", "mambavla/recorder_node"
CAMERA_SIZE = [48, 64]
CAMERA_HZ = 5.0  # a rate the simulator renders at steadily on a loaded 2-core machine


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    logs = tmp_path_factory.mktemp("record")
    root = logs / "episodes"
    probe = Probe("record_probe")
    nodes = [NodeProcess("sim_node", ["sim_node.yaml"], {"camera_rate_hz": CAMERA_HZ, "camera_size": CAMERA_SIZE,
                                                         "task": "lift", "seed": 11}, logs / "sim.log")]
    try:
        task = probe.wait_for(lambda: probe.task, "sim_node's /sim/task")
        nodes.append(NodeProcess("controller_node", ["controller.yaml", "controller_sim.yaml"],
                                 {"robot_ip": task["robot_ip"], "command_source": "teleop", "diagnostics_rate_hz": 5.0},
                                 logs / "controller.log"))
        nodes.append(NodeProcess("recorder_node", [], {"root": str(root), "cameras": ["front", "wrist"],
                                                       "instruction": task["instruction"], "reset_time_s": 0.0,
                                                       "diagnostics_rate_hz": 5.0}, logs / "recorder.log"))
        probe.wait_status(CTRL, lambda s: s["state"] == "IDLE" and s["command_source"] == "teleop", "teleop, tracking")
        probe.wait_status(REC, lambda s: s["state"] == "READY" and not s["missing"], "recorder inputs live")
        yield probe, task, root, nodes
    finally:
        for node in reversed(nodes):
            node.stop()
        probe.close()


def call(probe: Probe, service: str) -> Trigger.Response:
    client = probe.node.create_client(Trigger, service)
    assert client.wait_for_service(timeout_sec=TIMEOUT)
    future = client.call_async(Trigger.Request())
    probe.wait_for(future.done, f"{service} response")
    probe.node.destroy_client(client)
    return future.result()


class OperatorThread:
    """The scripted operator at 20 Hz on the probe's /ee_pose, publishing twists and the gripper command."""

    def __init__(self, probe: Probe, task: dict):
        from mambavla.sim.operator import ScriptedOperator

        self.probe, self.operator = probe, ScriptedOperator(task["task"], int(task["seed"]))
        self.twist_pub = probe.node.create_publisher(TwistStamped, "/teleop/twist", COMMAND_QOS)
        self.gripper_pub = probe.node.create_publisher(Float64, "/teleop/gripper", COMMAND_QOS)
        self.segment, self.stop = "", threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            position, quat = self.probe.pose()
            command = self.operator.command(position, quat, time.monotonic())
            msg = TwistStamped()
            msg.header.stamp, msg.header.frame_id = seconds_to_stamp(self.probe.now()), "fr3_link0"
            (msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z) = (float(v) for v in command.linear)
            (msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z) = (float(v) for v in command.angular)
            self.twist_pub.publish(msg)
            self.gripper_pub.publish(Float64(data=command.gripper))
            self.segment = command.segment
            time.sleep(0.05)


def test_a_teleoperated_episode_is_recorded_as_training_reads_it(stack):
    from mambavla.data.bags import read_episode

    probe, task, root, _ = stack
    operator = OperatorThread(probe, task)
    start, _ = probe.pose()
    assert call(probe, "/recorder_node/start").success
    operator.thread.start()
    try:
        # approach above the cube and descend to it: segments 0 and 1 of the expert's lift plan
        probe.wait_for(lambda: operator.segment.startswith(("settle", "grasp")), "the operator at the cube",
                       timeout=60.0)
        time.sleep(0.5)
    finally:
        operator.stop.set()
        operator.thread.join()
    assert call(probe, "/recorder_node/mark_success").success
    response = call(probe, "/recorder_node/save")
    assert response.success, response.message
    status = probe.wait_status(REC, lambda s: int(s["saved"]) == 1, "the save on /diagnostics")
    assert int(status["dropped"]) == 0 and not status["error"]

    episode = read_episode(root / "episode_000000")
    print(f"\nrecorded {len(episode)} frames over {episode.times[-1]:.1f} s, dt {episode.meta['dt']:.3f} s; "
          f"{response.message}")
    assert episode.instruction == task["instruction"] and episode.success is True
    assert episode.meta["dt"] == pytest.approx(1.0 / CAMERA_HZ, rel=0.2)
    assert len(episode) >= 5 and np.median(np.diff(episode.times)) == pytest.approx(episode.meta["dt"], rel=0.01)
    for name in ("front", "wrist"):
        frames = episode.images[name]
        assert frames.shape == (len(episode), *CAMERA_SIZE, 3)
        assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 1.0  # the scene changed
    # /action is the streamed target: it leads the measured pose by a few cm at most, and went where the arm went
    assert np.isfinite(episode.actions).all()
    lag = np.linalg.norm(episode.actions[:, :3] - episode.proprio[:, :3], axis=1)
    assert lag.max() < 0.05
    travelled = episode.proprio[-1, :3] - start
    assert np.linalg.norm(travelled) > 0.1
    assert np.linalg.norm(episode.actions[-1, :3] - episode.proprio[-1, :3]) < 0.02


def test_the_recorded_episode_trains_a_policy_that_replays_it_and_runs_in_simulation(stack, tmp_path, capsys):
    """record -> train -> replay -> eval-sim, as a user runs it: each stage reads what the one before wrote. An
    untrained tiny policy succeeds at nothing; what is checked is that every stage ran on the real outputs."""
    from mambavla.cli import main
    from mambavla.data.bags import read_episode

    _, _, root, _ = stack
    bag = root / "episode_000000"
    recorded = read_episode(bag)
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(run), "--preset", "tiny", "--steps", "2",
                 "--batch-size", "2", "--history", "window", "--history-frames", "2", "--val-fraction", "0",
                 "--device", "cpu", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["episodes"] == 1 and trained["steps"] == 2 and np.isfinite(trained["loss_last"])
    checkpoint = run / "last"
    assert (checkpoint / "model.safetensors").exists()
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["cameras"] == ["front", "wrist"] and config["policy_period"] == pytest.approx(recorded.meta["dt"])

    replayed = tmp_path / "replay"
    assert main(["replay", str(bag), "--checkpoint", str(checkpoint), "--out", str(replayed), "--zero-latency",
                 "--torch-threads", "1", "--no-progress", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((replayed / "replay.json").read_text())
    assert printed == report and report["mode"] == "offline" and report["bags"] == {bag.name: report["bags"][bag.name]}
    assert report["schedule"]["infer_mode"] == "period"
    # rows sit on a grid of the episode's dt, each taking the nearest message, so their span may pass the frames'
    # by up to half a row when the frames came unevenly; the bag's duration also holds state around the frames
    frames_span = recorded.times[-1] - recorded.times[0]
    assert frames_span - config["policy_period"] / 2 - 1e-3 <= report["recorded_s"] < frames_span + 2.0
    metrics = report["metrics"]
    # one chunk per policy period that has a recorded frame (a frame gone stale in a gap of the recording costs at
    # most one), each scored against what was recorded. Under load the recorder's frames come unevenly: two in one
    # period give one chunk, so periods with a frame are counted, not frames
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:  # when the front camera's frames reached the recorder (the bag's log time)
        front = [c for c in reader.connections if c.topic.startswith("/cameras/front/")]
        arrived = np.array([t for _, t, _ in reader.messages(connections=front)]) * 1e-9
    periods = len(np.unique(np.floor((arrived - arrived[0]) / config["policy_period"])))
    assert periods - report["frames_dropped"] - 1 <= metrics["chunks"] <= len(recorded) + 1, (
        metrics["chunks"], periods, len(recorded), report["frames_dropped"])
    assert report["bags"][bag.name]["chunks"] == metrics["chunks"]
    assert all(np.isfinite(v) for v in metrics["mae"].values()) and set(metrics["mae"]) == set(metrics["mae_units"])
    assert 0.0 <= metrics["gripper_agreement"] <= 1.0 and metrics["safety"]["chunks"] == metrics["chunks"]
    assert {Path(p).name for p in report["pictures"]} == {f"trajectories_{bag.name}.png", "horizon_error.png",
                                                         "worst_frames.png"}
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in report["pictures"])

    evaluated = tmp_path / "eval"
    limit = 1.0
    # a held-out layout whose instruction is the recorded one: the checkpoint refuses the cubes it never saw named
    from mambavla.sim.config import cell_config
    from mambavla.sim.tasks import EVAL_SEED_BASE, sample_episode

    sim = cell_config("sim")
    offset = next(k for k in range(200)
                  if sample_episode("lift", EVAL_SEED_BASE + k, sim)[0].instruction == recorded.instruction)
    assert main(["eval-sim", "--checkpoint", str(checkpoint), "--tasks", "lift", "--episodes", "1", "--time-limit",
                 str(limit), "--speed", "0", "--gif-episodes", "0", "--torch-threads", "1", "--out", str(evaluated),
                 "--seed", str(offset), "--json"]) == 0
    summary = json.loads((evaluated / "eval.json").read_text())
    assert json.loads(capsys.readouterr().out) == summary and summary["checkpoint"] == str(checkpoint)
    lift = summary["tasks"]["lift"]
    assert lift["episodes"] == 1 and lift["episodes_detail"][0]["error"] == ""
    # one chunk per policy period of the limit: the period comes from the recorded stamps (0.19986 s under load),
    # and an observation due just under the limit falls either side of the episode's last control tick
    periods = limit / config["policy_period"]
    assert int(periods) <= lift["chunks_produced"] <= int(periods) + 1, (lift["chunks_produced"], periods)
    assert lift["chunks_accepted"] + lift["chunks_rejected"] == lift["chunks_produced"]
    for value in (lift["success_rate"], summary["mean_success_rate"], *lift["inference_ms"].values()):
        assert np.isfinite(value)
    assert (evaluated / "success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mambavla_record_takes_keys_from_the_terminal(stack, tmp_path):
    import os
    import subprocess
    import sys

    probe, task, root, nodes = stack
    nodes[2].stop()  # the command runs its own recorder_node
    # a tracking controller (it publishes ~/action, an input the recorder waits for), enabled afresh: one left
    # HOLDING by the tests before would be stopped by the watchdog while the command starts
    call(probe, "/controller_node/stop")
    assert call(probe, "/controller_node/enable").success
    out = tmp_path / "demos"
    leader, follower = os.openpty()  # a terminal for the command's keys
    log = open(tmp_path / "record.log", "w")
    command = subprocess.Popen([sys.executable, "-m", "mambavla.cli", "record", "--out", str(out), "--instruction",
                                "stack the cubes", "--reset-time", "0"], stdin=follower, stdout=log, stderr=log)
    try:
        def key(text: str, wait: float = 1.0) -> None:
            os.write(leader, text.encode())
            time.sleep(wait)

        def ready() -> bool:  # the progress line, rewritten in place (\r), says ready with every input live
            lines = (tmp_path / "record.log").read_text().splitlines()
            return bool(lines) and lines[-1].lstrip("\x1b[K").startswith("ready |")

        # the recorder loads rclpy and waits for every input on cores the other nodes share
        probe.wait_for(ready, "the command ready with live inputs", timeout=TIMEOUT)
        key(" ", 2.0)  # start, record two seconds
        key("m")  # mark success
        key("\r")  # save
        key("q", 0.0)
        assert command.wait(30) == 0
    finally:
        if command.poll() is None:
            command.kill()
        log.close()
        os.close(leader)
        os.close(follower)
        nodes[2] = NodeProcess("recorder_node", [], {"root": str(root), "cameras": ["front", "wrist"],
                                                     "instruction": task["instruction"], "reset_time_s": 0.0,
                                                     "diagnostics_rate_hz": 5.0}, tmp_path / "recorder.log")
    text = (tmp_path / "record.log").read_text()
    assert "saved episode_000000" in text, text[-2000:]
    meta = json.loads((out / "episode_000000" / "episode.json").read_text())
    assert meta["success"] is True and meta["instruction"] == "stack the cubes" and meta["frames"] >= 5


def test_discard_leaves_no_episode_and_a_start_without_inputs_is_refused(stack):
    probe, _, root, nodes = stack
    call(probe, "/controller_node/stop")  # enabled afresh: the watchdog stops an arm nobody teleoperates
    assert call(probe, "/controller_node/enable").success
    probe.wait_status(REC, lambda s: s["root"] == str(root) and s["state"] == "READY" and not s["missing"],
                      "the module's recorder READY, inputs live")
    assert call(probe, "/recorder_node/start").success
    time.sleep(0.5)
    response = call(probe, "/recorder_node/discard")
    assert response.success and "discarded episode_000001" in response.message
    assert not (root / "episode_000001").exists() and (root / "episode_000000").exists()
    assert not call(probe, "/recorder_node/save").success  # nothing is being recorded
    nodes[1].stop()  # the controller goes: no /action, and the recorder refuses to start an episode without it
    probe.wait_status(REC, lambda s: "/action" in s["missing"], "the missing /action reported")
    response = call(probe, "/recorder_node/start")
    assert not response.success and "/action" in response.message and "controller_node" in response.message
