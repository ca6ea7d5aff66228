"""FR3 forward kinematics: 7 arm joint angles -> the end-effector pose franky reports (`O_T_EE`).

The model is the FR3 URDF that franky-sim ships (`franky_sim.urdf.URDF_PATH`, loaded with pinocchio, both
installed with franky-sim). The end effector is the Franka Hand's TCP as franky-sim places it
(`RobotParameters.ee_tcp_xyz` / `ee_tcp_rpy`: the flange `link8` moved 0.1034 m along its z axis and turned
-pi/4 about it, as `fr3_hand_joint` and `fr3_hand_tcp_joint` place `fr3_hand_tcp` in Franka's FR3 URDF), so
poses computed here line up with the `/ee_pose` our recordings hold. A dataset recorded with another end
effector configured in Desk has another `F_T_EE`, which these poses do not know.
"""

from __future__ import annotations

import functools

import numpy as np

FLANGE_FRAME = "link8"


@functools.lru_cache(maxsize=1)
def _model():
    import pinocchio as pin
    from franky_sim.base_simulator import RobotParameters
    from franky_sim.urdf import URDF_PATH

    model = pin.buildModelFromUrdf(str(URDF_PATH))
    hand = RobotParameters()  # flange -> TCP, as franky-sim reports O_T_EE
    tcp = pin.SE3(pin.rpy.rpyToMatrix(*hand.ee_tcp_rpy), np.array(hand.ee_tcp_xyz))
    return model, model.getFrameId(FLANGE_FRAME), tcp


def forward_kinematics(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., 7] arm joint angles (rad) -> base-frame TCP position [..., 3] (m) and quaternion (x, y, z, w) [..., 4]."""
    import pinocchio as pin

    model, flange, tcp = _model()
    q = np.asarray(joints, dtype=np.float64)
    if q.shape[-1] != model.nq:
        raise ValueError(f"FR3 forward kinematics needs {model.nq} arm joint angles, got {q.shape[-1]}")
    flat = q.reshape(-1, model.nq)
    data = model.createData()
    position = np.empty((len(flat), 3))
    quat = np.empty((len(flat), 4))
    for i, qi in enumerate(flat):
        pin.framesForwardKinematics(model, data, qi)
        pose = data.oMf[flange] * tcp
        position[i] = pose.translation
        quat[i] = pin.Quaternion(pose.rotation).coeffs()  # (x, y, z, w)
    return position.reshape(q.shape[:-1] + (3,)), quat.reshape(q.shape[:-1] + (4,))
