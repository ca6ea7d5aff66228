"""Run MambaVLA on a real Franka: policy_node (GPU) and controller_node (franky) with config/ parameters.

    ros2 launch mambavla robot.launch.py robot_ip:=172.16.0.2 checkpoint:=/path/to/ckpt \
        front_camera:=/camera_front/color/image_raw wrist_camera:=/camera_wrist/color/image_raw \
        params_file:=/path/to/my_cell.yaml

Cameras are named as the checkpoint names them: `cameras:=front,wrist` (the default) with one
`<name>_camera:=TOPIC` argument per camera (default /cameras/<name>/image_raw), or the topics inline,
`cameras:=front=/cam_a/color/image_raw,wrist=/cam_b/color/image_raw,top=/cam_c/color/image_raw`.
policy_node checks the names against the checkpoint when it loads.

`params_file:=FILE`: a YAML file with `controller_node:` and/or `policy_node:` sections
(`ros__parameters`), applied over the shipped config/controller.yaml and config/policy.yaml: the
workspace box, stiffness and limits of your cell without editing the installed files. The launch
arguments (robot_ip, checkpoint, cameras, device, ...) are applied last.

The controller starts disabled: `ros2 service call /controller_node/enable std_srvs/srv/Trigger`
(or enable:=true). Then `mambavla instruct "pick up the red cube"`.

franky needs a real-time (PREEMPT_RT) kernel for the 1 kHz loop; on another kernel the controller
refuses to connect and says so. realtime:=false runs without it (bench tests only, never near people).
If either node exits, the launch shuts down (a policy without a controller, or the reverse, is no use).
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

DEFAULT_CAMERAS = "front,wrist"
DEFAULT_TOPIC = "/cameras/{name}/image_raw"


def config(name):
    return PathJoinSubstitution([FindPackageShare("mambavla"), "config", name])


def camera_topics(cameras: str, topic_arguments: dict) -> tuple[list, list]:
    """(names, topics) from `cameras` ("front,wrist" or "front=/a/image_raw,wrist=/b/image_raw") and the
    `<name>_camera` launch arguments given (name -> topic)."""
    names, topics = [], []
    for item in cameras.split(","):
        name, _, inline = (part.strip() for part in item.partition("="))
        if not name:
            raise ValueError(f"cameras:={cameras!r} has an empty camera name: give them as cameras:=front,wrist")
        if name in names:
            raise ValueError(f"cameras:={cameras!r} names {name!r} twice: each checkpoint camera once")
        names.append(name)
        topics.append(inline or topic_arguments.get(f"{name}_camera") or DEFAULT_TOPIC.format(name=name))
    return names, topics


def parameter_files(params_file: str) -> list:
    """The user's parameter file as a list for `parameters=` (empty when none is given)."""
    if not params_file:
        return []
    path = os.path.abspath(os.path.expanduser(params_file))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"params_file:={params_file} does not exist: give the path of a YAML file with "
                                "controller_node: and/or policy_node: sections")
    return [path]


def checkpoint_folder(checkpoint: str) -> str:
    """The checkpoint argument, refused when empty: policy_node would then run an untrained preset (noise)."""
    if not checkpoint.strip():
        raise ValueError("checkpoint:= is empty: on a real arm give a trained checkpoint folder (an empty checkpoint "
                         "runs an untrained preset, whose actions are noise)")
    return checkpoint


def nodes(context):
    arguments = context.launch_configurations
    names, topics = camera_topics(LaunchConfiguration("cameras").perform(context), arguments)
    user = parameter_files(LaunchConfiguration("params_file").perform(context))
    checkpoint = checkpoint_folder(LaunchConfiguration("checkpoint").perform(context))
    controller = Node(
        package="mambavla",
        executable="controller_node",
        name="controller_node",
        output="screen",
        parameters=[
            config("controller.yaml"),
            *user,
            {
                "robot_ip": LaunchConfiguration("robot_ip"),
                "enable_on_start": ParameterValue(LaunchConfiguration("enable"), value_type=bool),
                "realtime": ParameterValue(LaunchConfiguration("realtime"), value_type=bool),
            },
        ],
    )
    policy = Node(
        package="mambavla",
        executable="policy_node",
        name="policy_node",
        output="screen",
        parameters=[
            config("policy.yaml"),
            *user,
            {"checkpoint": checkpoint, "device": LaunchConfiguration("device"),
             "image_transport": LaunchConfiguration("image_transport"),
             "depth_transport": LaunchConfiguration("depth_transport"),
             "camera_names": names, "camera_topics": topics},
        ],
    )
    shutdown_on_exit = [
        RegisterEventHandler(OnProcessExit(target_action=node, on_exit=[
            LogInfo(msg=f"{name} exited: shutting the launch down"),
            EmitEvent(event=Shutdown(reason=f"{name} exited"))]))
        for node, name in ((controller, "controller_node"), (policy, "policy_node"))
    ]
    cameras = ", ".join(f"{name} <- {topic}" for name, topic in zip(names, topics))
    return [LogInfo(msg=f"cameras: {cameras}" + (f"; parameters from {user[0]}" if user else "")),
            controller, policy] + shutdown_on_exit


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("robot_ip", description="FCI address of the arm"),
        DeclareLaunchArgument("checkpoint",
                              description="checkpoint folder (required: no untrained policy near a real arm)"),
        DeclareLaunchArgument("device", default_value="cuda", description="policy device"),
        DeclareLaunchArgument("cameras", default_value=DEFAULT_CAMERAS,
                              description="the checkpoint's camera names, comma-separated, each optionally "
                                          "name=topic (front=/cam_a/color/image_raw,wrist=/cam_b/color/image_raw)"),
        DeclareLaunchArgument("front_camera", default_value=DEFAULT_TOPIC.format(name="front"),
                              description="image topic of the camera named front (any camera: <name>_camera:=TOPIC)"),
        DeclareLaunchArgument("wrist_camera", default_value=DEFAULT_TOPIC.format(name="wrist"),
                              description="image topic of the camera named wrist"),
        DeclareLaunchArgument("image_transport", default_value="raw", choices=["raw", "compressed"],
                              description="cameras publish sensor_msgs/Image (raw) or CompressedImage on "
                                          "<camera topic>/compressed"),
        DeclareLaunchArgument("depth_transport", default_value="raw", choices=["raw", "compressedDepth"],
                              description="a depth checkpoint's aligned depth as sensor_msgs/Image (raw) or 16UC1 PNG "
                                          "on <depth topic>/compressedDepth"),
        DeclareLaunchArgument("params_file", default_value="",
                              description="YAML with controller_node / policy_node parameters over the shipped "
                                          "config (your cell's workspace box, stiffness, limits)"),
        DeclareLaunchArgument("enable", default_value="false", description="track without calling ~/enable first"),
        DeclareLaunchArgument("realtime", default_value="true",
                              description="require a PREEMPT_RT kernel (franky refuses otherwise); false for bench "
                                          "tests only"),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=nodes)])
