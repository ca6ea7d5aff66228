"""How far ahead of the measured pose the commanded target runs: the action lead that labels demonstrations
recorded without a commanded action (kinesthetic teaching, `record --kinesthetic`).

Where no action was recorded, the reader labels each row with the measured pose `action_lead` s later and the
gripper as closed where the fingers are closed that much later (`bags.derived_actions`). How good such labels
are depends on how far the arm trails its target, which differs between robots, controllers and stiffness. A
few teleoperated episodes of the same cell, which do record the commanded target, tell: `compare` labels their
rows both ways for each lead and reports the gap, so the lead is measured on the user's own arm instead of
assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mambavla import spaces
from mambavla.data.bags import gripper_closed


@dataclass(frozen=True)
class LeadResult:
    lead: float  # s
    position_mm: dict  # median, p95 of |commanded - derived| over every row of every episode, mm
    rotation_deg: dict  # median, p95 of the angle between commanded and derived orientation, degrees
    gripper_agreement: float  # share of rows whose derived open/closed matches the command

    def as_dict(self) -> dict:
        return {"lead_s": self.lead, "position_mm": self.position_mm, "rotation_deg": self.rotation_deg,
                "gripper_agreement": self.gripper_agreement}


def derived_labels(proprio: np.ndarray, rows_ahead: int) -> np.ndarray:
    """[T, 7] targets from the measured rows `proprio` ([T, 8]: pose vector, two finger positions) on a regular
    grid: the pose `rows_ahead` rows later (the last row past the end), and the gripper closed (1) where the
    finger width then is below `bags.gripper_closed`'s share of the widest, as the bag reader derives them."""
    ahead = np.minimum(np.arange(len(proprio)) + rows_ahead, len(proprio) - 1)
    width = proprio[:, 6:8].sum(axis=1)
    return np.concatenate([proprio[ahead, :6], gripper_closed(width[ahead], width.max())[:, None]], axis=1)


def compare(episodes: list[tuple[np.ndarray, np.ndarray]], dt: float, leads: list[float]) -> list[LeadResult]:
    """For each lead, the gap between each episode's commanded actions and the labels derived from its measured
    rows. `episodes`: (proprio [T, 8], actions [T, 7]) pairs on a grid of `dt` s."""
    if not episodes:
        raise ValueError("no episode with a recorded action to compare against")
    results = []
    for lead in leads:
        if not lead >= 0:
            raise ValueError(f"leads must be >= 0 s, got {lead}")
        k = int(round(lead / dt))
        position, rotation, agree = [], [], []
        for proprio, actions in episodes:
            derived = derived_labels(proprio, k)
            position.append(np.linalg.norm(actions[:, :3] - derived[:, :3], axis=1) * 1e3)
            commanded_q = spaces.rotvec_to_quat(actions[:, 3:6])
            derived_q = spaces.rotvec_to_quat(derived[:, 3:6])
            rotation.append(np.degrees(spaces.quat_angle_between(commanded_q, derived_q)))
            agree.append((actions[:, 6] > spaces.GRIPPER_CLOSE_THRESHOLD) == (derived[:, 6] > 0.5))  # derived: 0 / 1
        position, rotation, agree = (np.concatenate(v) for v in (position, rotation, agree))
        results.append(LeadResult(round(k * dt, 6), _spread(position), _spread(rotation),
                                  round(float(agree.mean()), 4)))
    return results


def _spread(values: np.ndarray) -> dict:
    return {"median": round(float(np.median(values)), 2), "p95": round(float(np.percentile(values, 95)), 2)}


def best(results: list[LeadResult]) -> LeadResult:
    """The lead whose derived positions lie nearest the commanded ones (median)."""
    return min(results, key=lambda r: r.position_mm["median"])


def plot(results: list[LeadResult], default: float, path) -> None:
    """Position gap (median, p95) and gripper agreement against the lead, the default marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    leads = [r.lead for r in results]
    fig, (ax, gx) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax.plot(leads, [r.position_mm["median"] for r in results], "o-", label="median")
    ax.plot(leads, [r.position_mm["p95"] for r in results], "s--", label="95th percentile")
    gx.plot(leads, [100 * r.gripper_agreement for r in results], "o-", color="C2")
    for axis in (ax, gx):
        axis.axvline(default, color="grey", lw=1, ls=":", label=f"default {default:g} s")
        axis.set_xlabel("action lead (s)")
    ax.set_ylabel("commanded - derived position (mm)")
    gx.set_ylabel("gripper labels agreeing (%)")
    ax.legend(fontsize=8)
    fig.suptitle("labels derived from the measured trajectory against the commanded target")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
