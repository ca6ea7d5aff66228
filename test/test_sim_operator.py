"""The scripted teleoperator without ROS or a simulator: its twists, integrated, follow the expert's plan."""

from __future__ import annotations

import numpy as np

from mambavla.sim.expert import down_quat
from mambavla.sim.operator import ScriptedOperator, gripper_yaw
from mambavla.spaces import quat_multiply, rotvec_to_quat


def test_integrated_twists_reach_the_experts_waypoints_and_the_gripper_closes_at_the_grasp():
    operator = ScriptedOperator("lift", seed=11)
    position, quat, dt = np.array([0.45, 0.0, 0.35]), down_quat(0.0), 0.05
    moves_seen, closed_at = set(), None
    for step in range(int(60 / dt)):
        command = operator.command(position, quat, step * dt)
        if command.done:
            break
        assert np.linalg.norm(command.linear) <= operator.max_speed + 1e-9
        assert abs(command.angular[2]) <= operator.max_turn + 1e-9
        if command.gripper == 1.0 and closed_at is None:
            closed_at = position.copy()
        position = position + command.linear * dt
        quat = quat_multiply(rotvec_to_quat(command.angular * dt), quat)
        if command.segment.startswith("move"):
            moves_seen.add(command.segment)
    assert command.done, f"the plan did not finish: stuck at {command.segment}"
    moves = [s for s in operator.segments if s.kind == "move"]
    grasp = operator.segments[[s.kind for s in operator.segments].index("grasp") - 1]  # the settle before it
    assert len(moves_seen) == len(moves)
    # the hand closed at the grasp pose, pointing down at the cube's yaw
    assert np.linalg.norm(closed_at - grasp.position) <= operator.tolerance + 1e-9
    assert abs(gripper_yaw(quat) - moves[-1].yaw) < 0.05
    assert np.linalg.norm(position - moves[-1].position) <= operator.tolerance + 1e-9  # lifted
