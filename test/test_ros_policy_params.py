"""policy_node's parameters as ROS sees them, in-process: derived from PolicyNodeConfig, read-only, a misspelt
key in a parameter file refused, and the node runs the InferenceSchedule that offline replay runs."""

from __future__ import annotations

import time
import types

import pytest
import rclpy
import ros_harness  # noqa: F401  (an isolated DDS domain before a context starts)
from rclpy.parameter import Parameter

from mambavla.model.config import preset
from mambavla.ros.policy_node import PolicyNode
from mambavla.runtime.policy_config import PolicyNodeConfig, parameters
from mambavla.runtime.schedule import InferenceSchedule

pytestmark = [pytest.mark.ros]


@pytest.fixture
def context():
    ctx = rclpy.Context()
    yield ctx
    ctx.try_shutdown()


def start(context, args: list[str], overrides: dict | None = None) -> PolicyNode:
    rclpy.init(args=["--ros-args", *args], context=context)
    overrides = [Parameter(k, value=v) for k, v in (overrides or {}).items()]
    return PolicyNode(context=context, parameter_overrides=overrides)


def wait_loaded(node: PolicyNode) -> None:
    """Until the node's worker has loaded the policy (it waits for frames then)."""
    deadline = time.monotonic() + 300.0
    while node.state == "LOADING" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert node.state == "WAITING", node.reason


def test_a_misspelt_key_in_a_parameter_file_stops_the_node_naming_the_key_meant(context, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("policy_node:\n  ros__parameters:\n    device: cpu\n    max_observaton_age: 2.0\n")
    with pytest.raises(ValueError, match=r"'max_observaton_age' \(did you mean 'max_observation_age'\?\) is not a "
                                         r"policy_node parameter"):
        start(context, ["--params-file", str(path)])


def test_the_node_declares_the_config_read_only_and_runs_replays_schedule(context):
    node = start(context, [], {"preset": "tiny", "device": "cpu", "torch_threads": 1, "infer_mode": "rate",
                               "infer_rate_hz": 4.0})
    try:
        for name, (default, description) in parameters().items():
            descriptor = node.describe_parameter(name)
            assert descriptor.description == description and descriptor.read_only
        assert not node.set_parameters([Parameter("infer_rate_hz", value=10.0)])[0].successful
        assert node.config == PolicyNodeConfig(preset="tiny", device="cpu", torch_threads=1, infer_mode="rate",
                                               infer_rate_hz=4.0)
        wait_loaded(node)
        tiny = preset("tiny")
        assert isinstance(node.schedule, InferenceSchedule)  # the class evaluation/offline.py replays with
        assert node.schedule.config == node.config.schedule_config(2, tiny.policy_period, tiny.chunk_size * tiny.dt)
        assert node.schedule.config.infer_period == 0.25
        assert node.schedule.buffer is node._observations  # robot state received while loading is kept
        assert node.depth_topics == [] and not any("depth" in s.topic_name for s in node.subscriptions)  # RGB only
    finally:
        node.shutdown()
        node.destroy_node()


def test_a_frame_too_large_to_decode_is_rejected_naming_the_memory_error(context, monkeypatch):
    from sensor_msgs.msg import Image

    import mambavla.ros.policy_node as policy_node

    node = start(context, [], {"preset": "tiny", "device": "cpu", "torch_threads": 1})
    try:
        wait_loaded(node)

        def too_large(*args, **kwargs):
            raise MemoryError("cannot allocate 9 GB")

        monkeypatch.setattr(policy_node, "image_to_rgb", too_large)
        with node._lock:
            node._undecoded[0] = (Image(), node._now(), time.perf_counter())
        node._convert_frames()  # the worker may take the frame first: the same rejection either way, soon
        deadline = time.monotonic() + 10.0
        while node.inputs_rejected == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert node.inputs_rejected == 1
        assert node.last_rejection == f"{node.image_topics[0]}: MemoryError: cannot allocate 9 GB"
    finally:
        node.shutdown()
        node.destroy_node()


def test_an_instruction_the_policy_fails_to_take_ends_the_previous_task(context, monkeypatch):
    """Not only a refused instruction (ValueError): any failure to take a new one must not leave the arm on the
    old task."""
    node = start(context, [], {"preset": "tiny", "device": "cpu", "torch_threads": 1})
    try:
        wait_loaded(node)
        node._apply_instruction("lift the red cube")
        assert node.instruction == "lift the red cube"

        def fails(text):
            raise RuntimeError("CUDA error: out of memory")

        monkeypatch.setattr(node.runtime, "set_instruction", fails)
        with pytest.raises(RuntimeError, match="out of memory"):  # the worker reports it as an ERROR
            node._apply_instruction("push the blue cube")
        assert node.instruction == ""  # no chunks for the old task: the controller holds
    finally:
        node.shutdown()
        node.destroy_node()


def test_an_instruction_outside_the_checkpoints_tasks_ends_the_task_and_says_why(context):
    from mambavla.model.checkpoint import shipped_checkpoint

    node = start(context, [], {"checkpoint": str(shipped_checkpoint()), "device": "cpu", "torch_threads": 1})
    try:
        wait_loaded(node)
        node._apply_instruction("lift the red cube")
        assert node.instruction == "lift the red cube"
        node._apply_instruction("make coffee")
        assert node.instruction == ""  # no chunks for the old task either: the controller holds
        assert "outside what the policy was trained for" in node.last_rejection
        assert node.last_rejection.endswith("the current task ends (the controller holds)")
        # a rewording is followed as the training instruction it snaps to, and /diagnostics says which
        node._apply_instruction("move the red cube rightwards")
        published = []
        node.diag_pub = types.SimpleNamespace(publish=published.append)
        node._publish_diagnostics()
        values = {kv.key: kv.value for kv in published[0].status[0].values}
        assert values["instruction"] == "move the red cube rightwards"
        assert values["conditioned_on"] in {"push the red cube right", "push the red cube to the right side",
                                            "slide the red cube to the right", "shove the red block over to the right"}
    finally:
        node.shutdown()
        node.destroy_node()
