"""echo_node: the transport floor under policy_node, for `mambavla bench-ros --echo`.

It subscribes to the camera topics as policy_node does (same QoS, same large-frame transport) and, once
every camera has a frame newer than the last echo, publishes an empty `/action_chunk` stamped with the
newest frame's stamp at once: no decoding, no policy. bench-ros's camera-in -> chunk-out through it is
what DDS and rclpy cost on the machine it runs on, both ways.
"""

from __future__ import annotations

from rclpy.node import Node
from sensor_msgs.msg import Image
from trajectory_msgs.msg import JointTrajectory

from mambavla.ros.params import declare
from mambavla.ros.qos import COMMAND_QOS, SENSOR_QOS
from mambavla.ros.spin import run_node


class EchoNode(Node):
    def __init__(self, **kwargs):
        super().__init__("echo_node", **kwargs)
        topics = declare(
            self,
            "camera_topics",
            ["/cameras/front/image_raw", "/cameras/wrist/image_raw"],
            "camera topics (sensor_msgs/Image) to wait for",
        )
        action_topic = declare(
            self, "action_topic", "/action_chunk", "where the echo goes (trajectory_msgs/JointTrajectory)"
        )
        self._fresh: set[int] = set()
        self._cameras = len(topics)
        self._pub = self.create_publisher(JointTrajectory, action_topic, COMMAND_QOS)
        for index, topic in enumerate(topics):
            self.create_subscription(Image, topic, lambda msg, i=index: self._on_image(i, msg), SENSOR_QOS)

    def _on_image(self, index: int, msg: Image) -> None:
        self._fresh.add(index)
        if len(self._fresh) == self._cameras:
            self._fresh.clear()
            echo = JointTrajectory()
            echo.header = msg.header
            self._pub.publish(echo)

    def shutdown(self) -> None:
        """Nothing to stop (run_node calls it on every node)."""


def main(args=None) -> None:
    run_node(EchoNode, args)


if __name__ == "__main__":
    main()
