"""Run the whole loop against the simulated FR3: sim_node (franky-sim + cameras), controller_node, policy_node.

    ros2 launch mambavla sim.launch.py task:=lift             # the shipped policy, on simulated time
    ros2 launch mambavla sim.launch.py checkpoint:=/path/rgbd_ckpt   # a depth policy: sim_node publishes depth
    mambavla instruct "lift the red cube"      # or publish_instruction:=true to use the task's own

robot_ip defaults to `auto`: a free loopback address of its own (127.x.y.z, checked by binding
libfranka's port), handed to both sim_node and controller_node, so the controller can never reach a
simulator (or robot) that another stack on this machine started. If sim_node or controller_node
exits, the whole launch shuts down.

depth defaults to `auto`: sim_node publishes each camera's aligned depth when the checkpoint takes depth
(`use_depth` in its config.json); `depth:=true` publishes it for any checkpoint (to record RGB-D demonstrations).

Where only the PyPI ROS 2 wheels exist (no `ros2 launch`), `mambavla demo` starts the same nodes with
the same parameter files.
"""

import random
import socket

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

LIBFRANKA_COMMAND_PORT = 1337


def config(name):
    return PathJoinSubstitution([FindPackageShare("mambavla"), "config", name])


def free_loopback_address() -> str:
    """A random 127.x.y.z nobody serves libfranka on (bind-checked), never the shared 127.0.0.1."""
    rng = random.SystemRandom()
    for _ in range(200):
        host = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, LIBFRANKA_COMMAND_PORT))
            except OSError:
                continue
        return host
    raise RuntimeError("no free loopback address for the simulated robot")


def shutdown_when_it_exits(action, name):
    return RegisterEventHandler(
        OnProcessExit(
            target_action=action,
            on_exit=[
                LogInfo(msg=f"{name} exited: shutting the launch down"),
                EmitEvent(event=Shutdown(reason=f"{name} exited")),
            ],
        )
    )


def publish_depth(argument: str, checkpoint: str) -> bool:
    """depth:=auto|true|false: auto is on when the checkpoint's config takes depth (an empty checkpoint: untrained
    preset, no depth)."""
    argument = argument.lower()
    if argument in ("true", "1", "yes"):
        return True
    if argument in ("false", "0", "no"):
        return False
    if argument != "auto":
        raise ValueError(f"depth:={argument} must be auto, true or false")
    from mambavla.runtime.policy_config import takes_depth  # as policy_node decides its depth subscriptions

    return takes_depth(checkpoint)


def nodes(context):
    sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1", "yes")
    checkpoint = LaunchConfiguration("checkpoint").perform(context)
    if checkpoint == "shipped":
        from mambavla.model.checkpoint import shipped_checkpoint

        checkpoint = str(shipped_checkpoint())
    robot_ip = LaunchConfiguration("robot_ip").perform(context)
    if robot_ip == "auto":
        robot_ip = free_loopback_address()
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
                "cell": LaunchConfiguration("cell"),
                "host": robot_ip,
                "publish_instruction": ParameterValue(LaunchConfiguration("publish_instruction"), value_type=bool),
                "publish_clock": sim_time,
                "depth": publish_depth(LaunchConfiguration("depth").perform(context), checkpoint),
            },
        ],
    )
    controller = Node(
        package="mambavla",
        executable="controller_node",
        name="controller_node",
        output="screen",
        parameters=[
            config("controller.yaml"),
            config("controller_sim.yaml"),
            {"robot_ip": robot_ip, "use_sim_time": sim_time},
        ],
    )
    policy = Node(
        package="mambavla",
        executable="policy_node",
        name="policy_node",
        output="screen",
        parameters=[
            config("policy.yaml"),
            config("policy_sim.yaml"),
            {"checkpoint": checkpoint, "device": LaunchConfiguration("device"), "use_sim_time": sim_time},
        ],
    )
    return [
        LogInfo(msg=f"simulated FR3 at {robot_ip}"),
        sim,
        controller,
        policy,
        shutdown_when_it_exits(sim, "sim_node"),
        shutdown_when_it_exits(controller, "controller_node"),
        shutdown_when_it_exits(policy, "policy_node"),
    ]


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument(
            "task", default_value="lift", description="lift, place, push-left, push-right, push, all"
        ),
        DeclareLaunchArgument(
            "seed", default_value="4", description="episode seed (4: a lift layout the shipped policy was trained on)"
        ),
        DeclareLaunchArgument(
            "cell", default_value="sim", description="sim, changed or moved (another camera pose, table, light)"
        ),
        DeclareLaunchArgument(
            "robot_ip",
            default_value="auto",
            description="loopback address sim_node serves on; auto = a free one of its own",
        ),
        DeclareLaunchArgument(
            "checkpoint",
            default_value="shipped",
            description="checkpoint folder; shipped = the policy shipped with the package; empty = untrained preset",
        ),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="true",
            description="the nodes run on the simulator's /clock (simulated time), not the wall clock",
        ),
        DeclareLaunchArgument("device", default_value="cpu", description="policy device"),
        DeclareLaunchArgument(
            "depth",
            default_value="auto",
            description="sim_node publishes aligned depth: auto (when the checkpoint takes depth), true or false",
        ),
        DeclareLaunchArgument(
            "publish_instruction", default_value="false", description="publish the task's instruction"
        ),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=nodes)])
