"""Run MambaVLA on a real Franka: policy_node (GPU) and controller_node (franky) with config/ parameters.

    ros2 launch mambavla robot.launch.py robot_ip:=172.16.0.2 checkpoint:=/path/to/ckpt \
        front_camera:=/camera_front/color/image_raw wrist_camera:=/camera_wrist/color/image_raw

The controller starts disabled: `ros2 service call /controller_node/enable std_srvs/srv/Trigger`
(or enable:=true). Then `mambavla instruct "pick up the red cube"`.

franky needs a real-time (PREEMPT_RT) kernel for the 1 kHz loop; on another kernel the controller
refuses to connect and says so. realtime:=false runs without it (bench tests only, never near people).
If either node exits, the launch shuts down (a policy without a controller, or the reverse, is no use).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def config(name):
    return PathJoinSubstitution([FindPackageShare("mambavla"), "config", name])


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument("robot_ip", description="FCI address of the arm"),
        DeclareLaunchArgument("checkpoint", description="checkpoint folder (required: no untrained policy near a real arm)"),
        DeclareLaunchArgument("device", default_value="cuda", description="policy device"),
        DeclareLaunchArgument("front_camera", default_value="/cameras/front/image_raw", description="front camera image topic"),
        DeclareLaunchArgument("wrist_camera", default_value="/cameras/wrist/image_raw", description="wrist camera image topic"),
        DeclareLaunchArgument("image_transport", default_value="raw", choices=["raw", "compressed"],
                              description="cameras publish sensor_msgs/Image (raw) or CompressedImage on <camera topic>/compressed"),
        DeclareLaunchArgument("enable", default_value="false", description="track without calling ~/enable first"),
        DeclareLaunchArgument("realtime", default_value="true",
                              description="require a PREEMPT_RT kernel (franky refuses otherwise); false for bench tests only"),
    ]
    controller = Node(
        package="mambavla",
        executable="controller_node",
        name="controller_node",
        output="screen",
        parameters=[
            config("controller.yaml"),
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
            {"checkpoint": LaunchConfiguration("checkpoint"), "device": LaunchConfiguration("device"),
             "image_transport": LaunchConfiguration("image_transport")},
        ],
        remappings=[
            ("/cameras/front/image_raw", LaunchConfiguration("front_camera")),
            ("/cameras/wrist/image_raw", LaunchConfiguration("wrist_camera")),
        ],
    )
    shutdown_on_exit = [
        RegisterEventHandler(OnProcessExit(target_action=node, on_exit=[
            LogInfo(msg=f"{name} exited: shutting the launch down"), EmitEvent(event=Shutdown(reason=f"{name} exited"))]))
        for node, name in ((controller, "controller_node"), (policy, "policy_node"))
    ]
    return LaunchDescription(arguments + [controller, policy] + shutdown_on_exit)
