"""controller_node's command callbacks in-process, with no robot behind it: an error inside the core is counted
as that message's rejection and never escapes the callback."""

from __future__ import annotations

import pytest
import rclpy
import ros_harness  # noqa: F401  (an isolated DDS domain before a context starts)
from geometry_msgs.msg import Twist
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message
from std_msgs.msg import Float64

from mambavla.ros.controller_node import ControllerNode

pytestmark = [pytest.mark.ros]


@pytest.fixture
def node():
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    # a loopback address nothing serves: the connector's attempts are refused at once
    overrides = [Parameter("robot_ip", value="127.77.0.1"), Parameter("realtime", value=False)]
    n = ControllerNode(context=context, parameter_overrides=overrides)
    try:
        yield n
    finally:
        n.control.join(5.0)
        n.destroy_node()
        context.try_shutdown()


@pytest.mark.parametrize(("callback", "message", "core_call", "what"), [
    ("_on_twist", Twist(), "submit_twist", "twist"),
    ("_on_gripper", Float64(data=1.0), "submit_gripper", "gripper command"),
])
def test_an_error_inside_the_core_is_counted_as_the_messages_rejection(node, monkeypatch, callback, message,
                                                                         core_call, what):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(node.core, core_call, broken)
    info = {"publisher_gid": {"data": b"\x01" * 16}}
    handle = getattr(node, callback)
    if callback == "_on_twist":
        handle(serialize_message(message), info, Twist)
    else:
        handle(serialize_message(message), info)
    status = node.core.status()
    assert status["teleop_rejected"] == 1
    assert status["teleop_last_rejection"] == f"internal error while taking a {what}: RuntimeError: a bug"
    assert status["teleop_rejections_by_kind"] == {"internal error": 1}  # not counted as the operator's bad input
    assert status["chunks_rejected"] == 0
