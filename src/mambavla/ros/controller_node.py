"""controller_node: executes action chunks or a teleoperation stream on a Franka arm through franky's
Cartesian impedance tracker.

Chunk scheduling, twist integration and every safety rule live in `mambavla.control.ControllerCore`; the control
loop (ticks, the controlled stop, faults, the gripper worker) in `mambavla.control.loop.ControlLoop`, which eval-sim
runs too. This node connects them to ROS (command subscriptions, state publishers, services, parameters,
diagnostics), connects to the robot, and runs the loop on a control thread at `rate_hz`. franky runs the 1 kHz
torque loop.

Command sources, one at a time (parameter `command_source` at start, then the services): "policy" takes
action chunks (trajectory_msgs/JointTrajectory on `action_topic`); "teleop" takes geometry_msgs/TwistStamped
on `teleop_twist_topic` or geometry_msgs/Twist on `teleop_cmd_vel_topic` (linear m/s, angular rad/s, in the
base frame, or in the gripper's frame when the header names `teleop_tool_frame`) and std_msgs/Float64 on
`teleop_gripper_topic` (0 open .. 1 closed). `~/action` publishes the streamed target and gripper command
as one JointTrajectory point (the layout a recording stores on /action).

Services (std_srvs/Trigger): ~/enable starts tracking, ~/stop brings the arm to rest and stops
tracking, ~/recover runs franky's automatic error recovery after a fault, ~/use_policy and ~/use_teleop
switch the command source (the arm holds its target until the new source sends).

Every command topic is read raw, and each callback drains what else is waiting on its subscription: a
publisher over its message budget (`max_command_rate_hz`, `teleop_max_rate_hz`) has its messages counted and
dropped before they are deserialised, at a few microseconds each instead of an executor round per message, so
a flood on one input neither holds up the control thread nor crowds another publisher out of the reader's
history. Publishers are told apart by the message info's publisher_gid; where rmw gives none, every publisher of
an input shares one budget (logged once; `*_without_publisher_id` in the diagnostics).

Threads: the control thread alone calls franky for the arm; connecting (blocking, no timeout in
franky) runs on its own thread and hands the robot over. ROS callbacks run in separate callback
groups (chunks, state publishing, diagnostics, services), so a waiting service request or a flood of
chunks never holds up state publishing or chunk handling. Services never wait on a control thread
that is stuck in a robot call: they answer that it is stuck.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import franky
import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, Twist, TwistStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidHandle
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from mambavla.control.config import TrackingParams, controller_core, controller_defaults
from mambavla.control.core import RUNNING, rejection_kind
from mambavla.control.gripper import GripperWorker
from mambavla.control.loop import ControlLoop, ControlThread
from mambavla.control.teleop import RateGate
from mambavla.realtime import keep_thread_scheduling
from mambavla.ros.convert import pose_to_msg, seconds_to_stamp, stamp_to_seconds, trajectory_to_chunk
from mambavla.ros.diagnostics import ERROR, OK, WARN, diagnostic_array
from mambavla.ros.params import declare, refuse_undeclared
from mambavla.ros.qos import COMMAND_QOS, DIAGNOSTICS_QOS, STATE_QOS
from mambavla.ros.services import answer_trigger
from mambavla.ros.spin import EXECUTOR_THREADS
from mambavla.ros.startup import run_until_stopped
from mambavla.spaces import ACTION_NAMES, FRANKA_MAX_FINGER_WIDTH, pose_to_vector

SERVICE_WAIT = 5.0  # s a service request waits for the control thread to carry it out
DRAIN_MAX = 256  # messages one command callback takes past the one it was given
WARN_EVERY = 1.0  # s between two warnings about one kind of rejected command
SERVICE_QOS = QoSProfile(depth=100)  # no concurrent request may be dropped (a dropped one could be ~/stop)
# Command subscriptions: COMMAND_QOS with a deep reader history. The history is shared by every publisher of a
# topic, so with a short one a flooding publisher overwrites a valid publisher's messages before they are taken;
# the rate gate then drops the flood's excess unread.
COMMAND_INTAKE_QOS = QoSProfile(history=COMMAND_QOS.history, depth=64, reliability=COMMAND_QOS.reliability,
                                durability=COMMAND_QOS.durability)

# What each number the controller takes from parameters means. Its default lives with its owner
# (control.config.controller_defaults: SafetyLimits, ControllerCore, TrackingParams), not here.
PARAMETERS = {
    "rate_hz": "target streaming rate in Hz (20-1000); franky closes the 1 kHz torque loop",
    "translational_stiffness": "Cartesian stiffness, N/m",
    "rotational_stiffness": "Cartesian stiffness, Nm/rad",
    "damping": "6 Cartesian damping values [x y z rx ry rz]; [-1] = critical damping",
    "translational_error_clip": "per-axis translation error the impedance law sees at most, m",
    "rotational_error_clip": "per-axis rotation error the impedance law sees at most, rad",
    "gripper": "drive the Franka Hand from the chunk's gripper column",
    "gripper_speed": "finger speed, m/s",
    "gripper_force": "grasp force, N",
    "gripper_open_delay": "a closed hand opens only after the chunks have asked for open this long without a break, s "
                          "(closing is immediate)",
    "workspace_min": "workspace box lower corner (base frame), m",
    "workspace_max": "workspace box upper corner (base frame), m",
    "workspace_clamp": "chunk rows outside the box by at most this are moved onto it; further out rejects the chunk, m",
    "max_linear_speed": "streamed target speed limit, m/s",
    "max_angular_speed": "streamed target angular speed limit, rad/s",
    "max_jump": "reject chunks whose consecutive rows are further apart, m",
    "max_jump_angle": "reject chunks whose consecutive rows rotate more, rad",
    "max_start_offset": "reject chunks starting further from the current target, m",
    "max_start_offset_angle": "same for orientation, rad",
    "max_chunk_age": "reject chunks whose observation is older than this, s",
    "max_chunk_future": "reject chunks stamped further in the future, s",
    "max_tilt": "reject targets tilting the gripper further from pointing down, rad",
    "min_chunk_dt": "reject chunks whose rows are closer in time, s",
    "max_chunk_dt": "reject chunks whose rows are further apart in time, s",
    "blend_window": "seconds over which a new chunk fades in over the one it replaces",
    "hold_after": "watchdog T1: hold the current pose after this long without a chunk, s",
    "stop_after": "watchdog T2: stop tracking after this long without a chunk, s",
    "max_tick_dt": "a late tick advances the target by at most this many seconds of motion",
    "action_names": "expected chunk dimensions, in order",
    "command_source": "command source at start: policy (action chunks) or teleop (twist stream); "
                      "~/use_policy and ~/use_teleop switch it",
    "max_command_rate_hz": "chunks per second admitted from one publisher; more are counted and dropped unread",
    "teleop_max_rate_hz": "teleoperation messages per second admitted from one publisher",
    "teleop_linear_scale": "m/s per unit of twist.linear (1 for drivers publishing m/s)",
    "teleop_angular_scale": "rad/s per unit of twist.angular",
    "teleop_max_linear": "reject twists faster than this after scaling (corrupt or mis-scaled), m/s; "
                         "max_linear_speed still limits the target",
    "teleop_max_angular": "reject twists turning faster than this after scaling, rad/s",
    "teleop_command_timeout": "a twist received longer ago than this counts as zero (the operator let go), s",
}


class ControllerNode(Node):
    def __init__(self, **kwargs):
        super().__init__("controller_node", **kwargs)
        p = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        self.robot_ip = p("robot_ip", "172.16.0.2", "FCI address of the arm (franky-sim prints its loopback address)")
        self.realtime = p("realtime", True, "require a realtime kernel (false for franky-sim)")
        self.enable_on_start = p("enable_on_start", False,
                                 "start tracking without ~/enable (config/controller_sim.yaml sets it; "
                                 "keep false on a real arm)")
        params = {name: p(name, default, PARAMETERS[name]) for name, default in controller_defaults().items()}
        self.core = controller_core(params)  # every safety rule and limit lives there
        self.tracking = TrackingParams.from_params(params)
        self.auto_recover = p("auto_recover", False, "after a franky fault, run error recovery at once (still STOPPED)")
        self.base_frame = p("base_frame", "fr3_link0", "frame of chunk targets and /ee_pose")
        self.arm_id = p("arm_id", "fr3", "prefix of the published joint names")
        action_topic = p("action_topic", "/action_chunk", "action chunks (trajectory_msgs/JointTrajectory)")
        joint_states_topic = p("joint_states_topic", "/joint_states", "published joint states")
        ee_pose_topic = p("ee_pose_topic", "/ee_pose", "published end-effector pose")
        state_rate = p("state_rate_hz", 50.0, "joint state / pose publishing rate, Hz")
        diagnostics_rate = p("diagnostics_rate_hz", 2.0, "status publishing rate, Hz")
        twist_topic = p("teleop_twist_topic", "/teleop/twist", "teleoperation twists (geometry_msgs/TwistStamped)")
        cmd_vel_topic = p("teleop_cmd_vel_topic", "/teleop/cmd_vel", "teleoperation twists (geometry_msgs/Twist)")
        gripper_topic = p("teleop_gripper_topic", "/teleop/gripper",
                          "teleoperation gripper command (std_msgs/Float64, 0 open .. 1 closed)")
        self.tool_frame = p("teleop_tool_frame", "fr3_hand_tcp",
                            "a TwistStamped with this frame_id is in the gripper's frame; "
                            "empty or base_frame: base frame")
        refuse_undeclared(self)  # a misspelt key (say the workspace box's) must not leave the default box in force

        if self.realtime and not kernel_is_realtime():
            self.get_logger().error(
                f"realtime is true but this kernel is not PREEMPT_RT ({os.uname().release}): franky will refuse to "
                "connect. Boot a real-time kernel for the arm, or set realtime false (launch argument realtime:=false) "
                "for bench tests only.")
        self.joint_names = [f"{self.arm_id}_joint{i}" for i in range(1, 8)] + [
            f"{self.arm_id}_finger_joint1", f"{self.arm_id}_finger_joint2"]

        # the arm, its hand and every franky call of the control thread
        self.loop = ControlLoop(self.core, self.tracking, lambda: (self._now(), time.monotonic()),
                                logger=self.get_logger(), auto_recover=self.auto_recover)
        self.control = ControlThread(self.loop, self.robot_ip, enable_on_start=self.enable_on_start)
        if not self.tracking.gripper:
            self.control.gripper_error = "gripper disabled by parameter"
        self.state_max_age = max(3.0 / state_rate, 0.5)  # an older robot state is not published as if fresh
        self.action_topic = action_topic
        self._chunk_gate = RateGate(self.tracking.max_command_rate_hz)
        self._teleop_gate = RateGate(self.tracking.teleop_max_rate_hz)
        self._warned: dict[tuple[str, str], float] = {}  # (what, kind of rejection) -> monotonic time of the warning
        teleop = MutuallyExclusiveCallbackGroup()  # one teleop message at a time: the gate is not shared across threads
        for msg_type, topic, handle, group in (
                (JointTrajectory, action_topic, self._on_chunk, MutuallyExclusiveCallbackGroup()),
                (TwistStamped, twist_topic, lambda d, i: self._on_twist(d, i, TwistStamped), teleop),
                (Twist, cmd_vel_topic, lambda d, i: self._on_twist(d, i, Twist), teleop),
                (Float64, gripper_topic, self._on_gripper, teleop)):
            subscription: list = []
            subscription.append(self.create_subscription(
                msg_type, topic, lambda data, info, h=handle, s=subscription: self._drain(s[0], h, data, info),
                COMMAND_INTAKE_QOS, raw=True, callback_group=group))
        self.action_pub = self.create_publisher(JointTrajectory, "~/action", STATE_QOS)
        self.joint_pub = self.create_publisher(JointState, joint_states_topic, STATE_QOS)
        self.pose_pub = self.create_publisher(PoseStamped, ee_pose_topic, STATE_QOS)
        self.target_pub = self.create_publisher(PoseStamped, "~/target_pose", STATE_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        services = MutuallyExclusiveCallbackGroup()  # one request at a time, in arrival order
        for name in ("enable", "stop", "recover"):
            self.create_service(Trigger, f"~/{name}", lambda req, resp, name=name: self._on_service(name, resp),
                                qos_profile=SERVICE_QOS, callback_group=services)
        for source in ("policy", "teleop"):  # the core switches under its lock: no control-thread round trip
            self.create_service(Trigger, f"~/use_{source}", lambda req, resp, s=source: self._on_use(s, resp),
                                qos_profile=SERVICE_QOS, callback_group=services)
        self.create_timer(1.0 / state_rate, self._publish_state, callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(1.0 / diagnostics_rate, self._publish_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup())
        self._connector = threading.Thread(target=self._connect_loop, name="connect", daemon=True)
        self._connector.start()
        self.control.start()

    # ---- ROS side ----

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _drain(self, subscription, handle, data: bytes, info: dict) -> None:
        """Handle the message the executor took, then take and handle what else is waiting (up to DRAIN_MAX)
        without a round through the executor. The callback group keeps the executor from taking meanwhile."""
        handle(data, info)
        for _ in range(DRAIN_MAX):
            try:
                with subscription.handle:
                    taken = subscription.handle.take_message(subscription.msg_type, True)
            except InvalidHandle:  # the node is being destroyed
                return
            if taken is None:
                return
            handle(*taken)

    def _warn(self, what: str, reason: str) -> None:
        """Warn about a rejected `what` at most every WARN_EVERY s per kind of rejection. rclpy's own throttle
        reads the caller's source file on every call, suppressed or not (hundreds of microseconds), which a flood
        would pay for each message it sends."""
        key, now = (what, rejection_kind(reason)), time.monotonic()
        if now - self._warned.get(key, -math.inf) >= WARN_EVERY:
            self._warned[key] = now
            self.get_logger().warning(f"rejected {what}: {reason}")

    def _admit(self, gate: RateGate, info: dict, what: str, limit: str) -> bool:
        """Whether the message's publisher is within its budget (else the drop is counted)."""
        gid = bytes((info.get("publisher_gid") or {}).get("data") or b"")
        allowed = gate.allow(gid, time.monotonic())
        if not gid and gate.unidentified == 1:
            self.get_logger().warning(
                f"the middleware gives no publisher_gid with a {what}: every publisher shares one budget of "
                f"{gate.rate:g}/s ({limit}), so a flooding publisher can crowd a valid one out")
        if allowed:
            return True
        reason = self.core.reject(f"publisher over {limit} {gate.rate:g}/s: {what} dropped unread",
                                  teleop=what != "chunk")
        self._warn(what, reason)
        return False

    def _on_chunk(self, data: bytes, info: dict) -> None:
        if not self._admit(self._chunk_gate, info, "chunk", "max_command_rate_hz"):
            return
        try:
            msg = deserialize_message(data, JointTrajectory)
            chunk = trajectory_to_chunk(msg, self.base_frame)
        except Exception as err:  # ValueError from the checks; anything from a message rmw could not decode
            reason = self.core.reject(f"malformed chunk: {err}")
        else:
            reason = self._submit("chunk", lambda: self.core.submit(chunk, self._now(), mono=time.monotonic()),
                                  teleop=False)
        if reason:
            self._warn("chunk", reason)

    def _submit(self, what: str, submit, teleop: bool) -> str | None:
        """`submit()`'s rejection reason; an exception from it (a bug: nothing was scheduled) is counted as a
        rejection of the message, of its own kind, instead of ending the callback, which would leave the executor's
        thread and the message's reader history to a traceback."""
        try:
            return submit()
        except Exception as err:
            return self.core.reject(f"internal error while taking a {what}: {type(err).__name__}: {err}",
                                    teleop=teleop)

    def _on_twist(self, data: bytes, info: dict, kind) -> None:
        if not self._admit(self._teleop_gate, info, "twist", "teleop_max_rate_hz"):
            return
        try:
            msg = deserialize_message(data, kind)
        except Exception as err:
            reason = self.core.reject(f"malformed twist: {err}", teleop=True)
        else:
            stamp, frame = None, "base"
            if kind is TwistStamped:
                frame_id, sec = msg.header.frame_id, msg.header.stamp
                stamp = None if sec.sec == 0 and sec.nanosec == 0 else stamp_to_seconds(sec)  # unstamped driver
                frame = "base" if frame_id in ("", self.base_frame) else "tool" if frame_id == self.tool_frame else ""
                msg = msg.twist
            if not frame:
                reason = self.core.reject(f"twist frame_id {frame_id!r} is neither base_frame {self.base_frame!r} "
                                          f"(or empty) nor teleop_tool_frame {self.tool_frame!r}", teleop=True)
            else:
                linear, angular = msg.linear, msg.angular
                reason = self._submit("twist", lambda: self.core.submit_twist(
                    (linear.x, linear.y, linear.z), (angular.x, angular.y, angular.z), self._now(), stamp=stamp,
                    mono=received_at(info), frame=frame), teleop=True)
        if reason:
            self._warn("twist", reason)

    def _on_gripper(self, data: bytes, info: dict) -> None:
        if not self._admit(self._teleop_gate, info, "gripper command", "teleop_max_rate_hz"):
            return
        try:
            value = float(deserialize_message(data, Float64).data)
        except Exception as err:  # anything from a message rmw could not decode: counted, never raised
            reason = self.core.reject(f"malformed gripper command: {err}", teleop=True)
        else:
            reason = self._submit("gripper command", lambda: self.core.submit_gripper(value), teleop=True)
        if reason:
            self._warn("gripper command", reason)

    def _on_use(self, source: str, response: Trigger.Response) -> Trigger.Response:
        return answer_trigger(self, f"use_{source}", response, (True, self.core.set_source(source)))

    def _on_service(self, name: str, response: Trigger.Response) -> Trigger.Response:
        stuck = self.control.stuck()
        if stuck:
            result = False, f"{name} refused: {stuck}"
        else:
            result = self.control.request(name, SERVICE_WAIT) or (False, (
                f"{name}: not done within {SERVICE_WAIT} s ({self.control.stuck() or 'control thread busy'}); "
                "cancelled"))
        return answer_trigger(self, name, response, result)

    def _publish_state(self) -> None:
        snap = self.loop.snapshot
        if snap is None or self.loop.robot is None or time.monotonic() - snap.mono > self.state_max_age:
            return  # disconnected or the control thread is stuck: an old state must not look fresh
        stamp, q, dq, tau, position, quat, _ = snap
        gripper = self.loop.gripper  # the control thread may clear it between check and use
        width = gripper.width if gripper is not None else float("nan")
        js = JointState()
        js.header.stamp = seconds_to_stamp(stamp)
        js.name = self.joint_names
        js.position = [float(v) for v in q] + [width / 2.0, width / 2.0]
        js.velocity = [float(v) for v in dq] + [0.0, 0.0]
        js.effort = [float(v) for v in tau] + [0.0, 0.0]
        self.joint_pub.publish(js)
        self.pose_pub.publish(pose_to_msg(position, quat, stamp, self.base_frame))
        target = self.core.target
        if target is not None and self.core.state in RUNNING:
            self.target_pub.publish(pose_to_msg(target[0], target[1], stamp, self.base_frame))
        command = self.loop.last_command
        if command is not None and self.core.state in RUNNING:
            action = JointTrajectory(joint_names=list(ACTION_NAMES))
            action.header.stamp, action.header.frame_id = seconds_to_stamp(command[0]), self.base_frame
            row = np.concatenate([pose_to_vector(command[1].position, command[1].quat), [command[1].gripper]])
            action.points = [JointTrajectoryPoint(positions=[float(v) for v in row])]
            self.action_pub.publish(action)

    def _publish_diagnostics(self) -> None:
        status = self.core.status()
        state = status["state"]
        gripper = self.loop.gripper  # the control thread may clear it between check and use
        level = {"IDLE": OK, "ACTIVE": OK, "HOLDING": WARN, "STOPPED": WARN, "ERROR": ERROR}[state]
        rate, jitter, worst = self.loop.rate_stats
        stuck = self.control.stuck()
        publishers = self.count_publishers(self.action_topic)
        snap = self.loop.snapshot
        values = {
            **status,
            "rejections_by_kind": json.dumps(status["rejections_by_kind"]),
            "teleop_rejections_by_kind": json.dumps(status["teleop_rejections_by_kind"]),
            "target_rate_hz": rate,
            "target_jitter_ms": jitter,
            "target_max_period_ms": worst,
            "franky_error": self.loop.franky_error,
            "gripper_width": gripper.width if gripper is not None else float("nan"),
            "gripper_implausible_widths": gripper.implausible_widths if gripper is not None else 0,
            "gripper_error": gripper.error if gripper is not None else self.control.gripper_error,
            "robot_ip": self.robot_ip,
            "robot_state_age_s": float("nan") if snap is None else time.monotonic() - snap.mono,
            "control_thread": stuck or "ok",
            "chunk_publishers": publishers,
            # messages whose publisher rmw did not identify: those share one rate budget instead of one each
            "chunks_without_publisher_id": self._chunk_gate.unidentified,
            "teleop_without_publisher_id": self._teleop_gate.unidentified,
        }
        message = f"{state} ({status['command_source']}): {status['reason']}"
        if publishers > 1:  # two policies (or a stray node) steering one arm
            level = max(level, WARN)
            message += f"; {publishers} publishers on {self.action_topic}"
        if stuck:
            level, message = ERROR, f"{message}; {stuck}"
        self.diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), "mambavla/controller_node",
                                               self.robot_ip, level, message, values))

    # ---- connector thread ----

    def _connect_loop(self) -> None:
        """Connector thread: franky.Robot / franky.Gripper block without a timeout, so never on the control thread."""
        control = self.control
        while control.running:
            if not control.want_connection.wait(timeout=0.2):
                continue
            control.want_connection.clear()
            try:
                config = franky.RealtimeConfig.Enforce if self.realtime else franky.RealtimeConfig.Ignore
                with keep_thread_scheduling(enabled=not self.realtime):  # real-time only where asked for
                    robot = franky.Robot(self.robot_ip, realtime_config=config)
            except Exception as err:  # NetworkException, IncompatibleVersionException, RealtimeException ...
                message = f"cannot connect to {self.robot_ip}: {err}"
                if self.realtime and "realtime" in str(err).lower():
                    message += (" (this kernel is not real-time: use a PREEMPT_RT kernel, or realtime:=false for "
                                "tests only)")
                control.connections.put((None, None, message))
                continue
            gripper, gripper_error = None, ""
            if self.tracking.gripper:
                # franky.Gripper has no timeout: should the hand not answer, this line says where startup waits
                self.get_logger().info(f"arm at {self.robot_ip} answers; connecting to its hand")
                try:
                    with keep_thread_scheduling(enabled=not self.realtime):
                        hand = franky.Gripper(self.robot_ip)
                    gripper = GripperWorker(hand, self.tracking.gripper_speed, self.tracking.gripper_force,
                                            FRANKA_MAX_FINGER_WIDTH,
                                            self.get_logger(), open_delay=self.tracking.gripper_open_delay)
                except Exception as err:  # the arm is still usable; the status says the hand is not
                    gripper_error = f"no gripper at {self.robot_ip}: {err}"
            control.connections.put((robot, gripper, gripper_error))

    def shutdown(self) -> None:
        """Stop tracking (arm brought to rest), then the threads. Signals are ignored meanwhile (ros/spin.py)."""
        stuck = self.control.stuck()
        if not stuck:
            result = self.control.request("shutdown", 10.0, cancel_late=False)
            if result is None:
                self.get_logger().error("shutdown: the controlled stop did not finish within 10 s")
            else:
                (self.get_logger().info if result[0] else self.get_logger().error)(f"shutdown: {result[1]}")
        elif self.loop.tracker is not None:
            self.get_logger().error(f"shutdown: cannot stop the arm: {stuck}")
        self.control.join(timeout=5.0)
        if self.loop.gripper is not None:
            self.loop.gripper.close()


def received_at(info: dict) -> float:
    """The monotonic time a message reached the node's reader (the message info's received_timestamp, on the system
    clock), not when a callback took it: a twist that sat in the reader's history while the callbacks were busy
    has used up that much of teleop_command_timeout. The take time where rmw gives no receipt time."""
    now, received = time.monotonic(), info.get("received_timestamp") or 0
    if not received:
        return now
    return now - max(0.0, (time.time_ns() - received) * 1e-9)


def kernel_is_realtime() -> bool:
    try:
        return Path("/sys/kernel/realtime").read_text().strip() == "1"
    except OSError:
        return "PREEMPT_RT" in os.uname().version


def main(args=None) -> None:
    # the control thread must get the interpreter lock back quickly while callbacks (a chunk flood) run
    sys.setswitchinterval(0.001)

    def connecting(node: ControllerNode) -> str:  # what a stop before the first connection interrupts
        if node.control.connected_before:
            return ""
        error = node.loop.franky_error
        tried = f" (last attempt: {error})" if error else ""
        return f"connecting to the robot at {node.robot_ip}{tried}"

    run_until_stopped("controller_node", ControllerNode, connecting, args, threads=EXECUTOR_THREADS)


if __name__ == "__main__":
    main()
