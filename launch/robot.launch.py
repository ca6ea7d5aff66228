"""Run MambaVLA on a real Franka: policy_node (GPU) and controller_node (franky) with config/ parameters.

    ros2 launch mambavla robot.launch.py robot_ip:=172.16.0.2 checkpoint:=/path/to/ckpt \
        front_camera:=/camera_front/color/image_raw wrist_camera:=/camera_wrist/color/image_raw

The controller starts disabled: `ros2 service call /controller_node/enable std_srvs/srv/Trigger`
(or enable:=true). Then `mambavla instruct "pick up the red cube"`.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
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
        DeclareLaunchArgument("enable", default_value="false", description="track without calling ~/enable first"),
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
            {"checkpoint": LaunchConfiguration("checkpoint"), "device": LaunchConfiguration("device")},
        ],
        remappings=[
            ("/cameras/front/image_raw", LaunchConfiguration("front_camera")),
            ("/cameras/wrist/image_raw", LaunchConfiguration("wrist_camera")),
        ],
    )
    return LaunchDescription(arguments + [controller, policy])
