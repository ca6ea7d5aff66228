"""recorder_node: records demonstrations as one rosbag2 per episode (`mambavla.data.recorder.EpisodeRecorder`,
the layout training reads). `mambavla record` runs it with keys on the terminal; the services drive it from
anywhere.

Inputs, all taken raw (stored as they arrive, camera frames JPEG-encoded off the callback threads): each camera
of `cameras` on `camera_topic` (sensor_msgs/Image, or sensor_msgs/CompressedImage on `<topic>/compressed` with
`compressed_cameras`); with `depth`, each camera's aligned depth on `depth_topic` (by default realsense-ros's
`aligned_depth_to_color/image_raw` beside the camera topic): sensor_msgs/Image 16UC1 mm stored as it comes, 32FC1 m
or compressedDepth (`<topic>/compressedDepth` with `compressed_depth`) stored as 16UC1 mm; `joint_states_topic`,
`ee_pose_topic`, and controller_node's streamed target and gripper command on `action_topic` (stored as /action),
the instruction on `instruction_topic` (latched std_msgs/String; the `instruction` parameter until one arrives).

Services (std_srvs/Trigger): ~/start, ~/save, ~/discard, ~/mark_success, ~/mark_failure. Status on
/diagnostics ("mambavla/recorder_node").
"""

from __future__ import annotations

import json
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from mambavla.data.bags import ACTION_TOPIC, EE_POSE_TOPIC, JOINT_STATE_TOPIC
from mambavla.data.recorder import READY, RECORDING, EpisodeRecorder, check_meta
from mambavla.ros.diagnostics import OK, WARN, diagnostic_array
from mambavla.ros.params import declare
from mambavla.ros.qos import DIAGNOSTICS_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS
from mambavla.ros.services import answer_trigger
from mambavla.ros.startup import run_until_stopped
from mambavla.runtime.policy_config import depth_topic_of

# Frames arrive at 30 Hz or more: a reader history of a few frames rides out a pause of the executor thread
# instead of overwriting frames the drivers delivered.
FRAME_QOS = QoSProfile(history=SENSOR_QOS.history, depth=10, reliability=SENSOR_QOS.reliability,
                       durability=SENSOR_QOS.durability)
STATE_INTAKE_QOS = QoSProfile(history=STATE_QOS.history, depth=50, reliability=STATE_QOS.reliability,
                              durability=STATE_QOS.durability)
MAX_INSTRUCTION_CHARS = 1000  # as policy_node's default max_instruction_chars


class RecorderNode(Node):
    def __init__(self, **kwargs):
        super().__init__("recorder_node", **kwargs)
        p = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        root = p("root", "recordings", "folder the episode bags go into (episode_000000, ...)")
        cameras = p("cameras", ["front", "wrist"], "camera names, in the bag as /cameras/<name>/...; the first "
                    "one's frames are the episode's steps")
        camera_topic = p("camera_topic", "/cameras/{camera}/image_raw", "camera topic pattern, {camera} = name")
        compressed = p("compressed_cameras", False, "subscribe to <camera topic>/compressed (CompressedImage, "
                       "stored as it comes) instead of raw Image frames (JPEG-encoded here)")
        jpeg_quality = p("jpeg_quality", 90, "JPEG quality of the stored frames (1-100)")
        depth = p("depth", False, "also record each camera's depth aligned to its colour frames (an input every "
                  "episode then needs)")
        depth_topic = p("depth_topic", "", "aligned depth topic pattern, {camera} = name (sensor_msgs/Image 16UC1 mm "
                        "or 32FC1 m); empty: beside camera_topic as realsense-ros lays them out, <its folder less a "
                        "color/ or rgb/>/aligned_depth_to_color/image_raw")
        compressed_depth = p("compressed_depth", False, "subscribe to <depth topic>/compressedDepth (16UC1 PNG, "
                             "compressed_depth_image_transport) instead of raw Image depth; stored as 16UC1")
        self.instruction = p("instruction", "", "instruction until one arrives on instruction_topic")
        reset_time = p("reset_time_s", 5.0, "seconds after an episode for resetting the scene")
        episode_time = p("episode_time_s", 0.0, "save an episode automatically after this long, s (0: never)")
        self.auto_start = p("auto_start", False, "start the next episode when the reset time is over")
        episode_meta = p("episode_meta", "", "more fields for every episode's episode.json, a JSON object (e.g. "
                         '{"operator": "ana", "cell": "bench 2"}); empty: none')
        topics = {JOINT_STATE_TOPIC: p("joint_states_topic", JOINT_STATE_TOPIC, "robot joint states (JointState)"),
                  EE_POSE_TOPIC: p("ee_pose_topic", EE_POSE_TOPIC, "end-effector pose (PoseStamped)"),
                  ACTION_TOPIC: p("action_topic", "/controller_node/action",
                                  "the commanded action (JointTrajectory, one point): controller_node's ~/action; "
                                  "empty for kinesthetic teaching (actions derived from the measured trajectory)")}
        instruction_topic = p("instruction_topic", "/instruction", "operator instruction (std_msgs/String, latched)")
        diagnostics_rate = p("diagnostics_rate_hz", 2.0, "status publishing rate, Hz")

        self.recorder = EpisodeRecorder(root, cameras, jpeg_quality=jpeg_quality, reset_time=reset_time,
                                        episode_time=episode_time, record_action=bool(topics[ACTION_TOPIC]),
                                        depth=depth, meta=parse_episode_meta(episode_meta))
        for name in cameras:
            topic = camera_topic.format(camera=name) + ("/compressed" if compressed else "")
            self.create_subscription(CompressedImage if compressed else Image, topic,
                                     lambda data, info, n=name: self.recorder.on_camera(n, _received(info), data,
                                                                                        compressed),
                                     FRAME_QOS, raw=True)
        depth_topic = depth_topic or depth_topic_of(camera_topic)
        for name in self.recorder.depth_cameras:
            topic = depth_topic.format(camera=name) + ("/compressedDepth" if compressed_depth else "")
            self.create_subscription(CompressedImage if compressed_depth else Image, topic,
                                     lambda data, info, n=name: self.recorder.on_depth(n, _received(info), data,
                                                                                       compressed_depth),
                                     FRAME_QOS, raw=True)
        for bag_topic, msg_type in ((JOINT_STATE_TOPIC, JointState), (EE_POSE_TOPIC, PoseStamped),
                                    (ACTION_TOPIC, JointTrajectory)):
            if not topics[bag_topic]:
                continue
            self.create_subscription(msg_type, topics[bag_topic],
                                     lambda data, info, t=bag_topic: self.recorder.on_state(t, _received(info), data),
                                     STATE_INTAKE_QOS, raw=True)
        self.create_subscription(String, instruction_topic, self._on_instruction, LATCHED_QOS)
        for name in ("start", "save", "discard", "mark_success", "mark_failure"):
            self.create_service(Trigger, f"~/{name}", lambda req, resp, name=name: self._on_service(name, resp))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self.create_timer(1.0 / diagnostics_rate, self._publish_diagnostics)
        self.create_timer(0.1, self._poll)

    def _on_instruction(self, msg: String) -> None:
        text = msg.data.strip()
        if text and len(text) <= MAX_INSTRUCTION_CHARS:
            self.instruction = text
        else:
            why = f"{len(text)} characters > {MAX_INSTRUCTION_CHARS}" if text else "empty"
            self.get_logger().warning(f"instruction on the topic ignored ({why}); episodes keep {self.instruction!r}")

    def command(self, name: str) -> tuple[bool, str]:
        """start / save / discard / mark_success / mark_failure, from a service or the terminal."""
        if name == "start":
            return self.recorder.start(self.instruction)
        if name == "save":
            return self.recorder.save()
        if name == "discard":
            return self.recorder.discard()
        if name in ("mark_success", "mark_failure"):
            return self.recorder.mark_success(name == "mark_success")
        return False, f"unknown command {name!r}"

    def _on_service(self, name: str, response: Trigger.Response) -> Trigger.Response:
        return answer_trigger(self, name, response, self.command(name))

    def _poll(self) -> None:
        if self.recorder.poll() == "save":
            ok, text = self.recorder.save()
            self.get_logger().info(f"episode_time_s reached: {text}")
        elif self.auto_start and self.recorder.state == READY and self.recorder.saved + \
                self.recorder.discarded > 0 and not self.recorder.missing_inputs():
            ok, text = self.recorder.start(self.instruction)
            self.get_logger().info(f"auto_start: {text}")

    def _publish_diagnostics(self) -> None:
        status = self.recorder.status()
        trouble = status["dropped"] or status["error"] or (status["missing"] and status["state"] == RECORDING)
        level = WARN if trouble else OK
        message = f"{status['state']}: {status['message']}"
        self.diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), "mambavla/recorder_node",
                                               str(self.recorder.root), level, message,
                                               {**status, "current_instruction": self.instruction}))

    def shutdown(self) -> None:
        self.recorder.close()


def parse_episode_meta(text: str) -> dict:
    """The `episode_meta` parameter: a JSON object of extra sidecar fields, or nothing. Refused (the node does
    not start) when it is not an object, so a typo is not silently dropped from every episode recorded."""
    if not text.strip():
        return {}
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"episode_meta is not JSON ({err}): {text!r}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"episode_meta must be a JSON object, got {type(meta).__name__}: {text!r}")
    return check_meta(meta)  # checked here too, so the message names the parameter before anything starts


def _received(info: dict) -> int:
    """The bag's log time of a message: when it was received (ns), else now."""
    return int(info.get("received_timestamp") or time.time_ns())


def main(args=None) -> None:
    # once constructed it records, and a signal takes the ordinary shutdown (which closes an open bag)
    run_until_stopped("recorder_node", RecorderNode, lambda node: "", args, constructing="setting the recorder up")


if __name__ == "__main__":
    main()
