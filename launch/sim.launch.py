"""Run the whole loop against the simulated FR3: sim_node (franky-sim + cameras), controller_node, policy_node.

    ros2 launch mambavla sim.launch.py task:=lift checkpoint:=/path/to/ckpt
    mambavla instruct "lift the red cube"      # or publish_instruction:=true to use the task's own

Where only the PyPI ROS 2 wheels exist (no `ros2 launch`), `mambavla demo` starts the same nodes with
the same parameter files.
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
        DeclareLaunchArgument("task", default_value="lift", description="lift, place, push-left, push-right, push, all"),
        DeclareLaunchArgument("seed", default_value="0", description="episode seed"),
        DeclareLaunchArgument("robot_ip", default_value="127.0.0.1", description="loopback address sim_node serves on"),
        DeclareLaunchArgument("checkpoint", default_value="", description="checkpoint folder (empty: untrained preset)"),
        DeclareLaunchArgument("device", default_value="cpu", description="policy device"),
        DeclareLaunchArgument("publish_instruction", default_value="false", description="publish the task's instruction"),
    ]
    robot_ip = LaunchConfiguration("robot_ip")
    sim = Node(
        package="mambavla",
        executable="sim_node",
        name="sim_node",
        output="screen",
        parameters=[
            config("sim_node.yaml"),
            {
                "task": LaunchConfiguration("task"),
                "seed": ParameterValue(LaunchConfiguration("seed"), value_type=int),
                "host": robot_ip,
                "publish_instruction": ParameterValue(LaunchConfiguration("publish_instruction"), value_type=bool),
            },
        ],
    )
    controller = Node(
        package="mambavla",
        executable="controller_node",
        name="controller_node",
        output="screen",
        parameters=[config("controller.yaml"), config("controller_sim.yaml"), {"robot_ip": robot_ip}],
    )
    policy = Node(
        package="mambavla",
        executable="policy_node",
        name="policy_node",
        output="screen",
        parameters=[
            config("policy.yaml"),
            config("policy_sim.yaml"),
            {"checkpoint": LaunchConfiguration("checkpoint"), "device": LaunchConfiguration("device")},
        ],
    )
    return LaunchDescription(arguments + [sim, controller, policy])
