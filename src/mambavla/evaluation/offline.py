"""Offline replay: the bag's messages, in recording order and on the bag's clock, through the same
`InferenceSchedule` and `PolicyRuntime` that policy_node uses.

The node's worker thread is simulated on the bag clock: it wakes when the schedule says a chunk is
due, chooses the latest observation, and is busy for the inference's measured time (or none, with
`latency="zero"`), while messages keep arriving and replacing the latest frames, as in the node. A policy that
takes depth gets each camera's depth frame stamped nearest its colour frame (`DepthFrames`, as the node pairs
them), and the worker waits while one is missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mambavla import spaces
from mambavla.data.roles import depth_role
from mambavla.evaluation.bag import BagInfo, ReplayError, finger_positions, read_messages
from mambavla.evaluation.recording import PredictedChunk, Recording, absolute_targets
from mambavla.runtime.depth_frames import MAX_OFFSET, DepthFrame, DepthFrames
from mambavla.runtime.schedule import Frame, InferenceSchedule, ScheduleConfig

LATENCIES = ("measured", "zero")


@dataclass
class ReplayResult:
    info: BagInfo
    instruction: str
    recording: Recording
    chunks: list[PredictedChunk] = field(default_factory=list)
    frames_dropped: int = 0
    wall_s: float = 0.0


def replay_offline(
    runtime,
    info: BagInfo,
    schedule_config: ScheduleConfig,
    instruction: str | None = None,
    latency: str = "measured",
    progress: bool = True,
    max_depth_offset: float = MAX_OFFSET,
) -> ReplayResult:
    """Run `runtime` on the bag as policy_node would; returns the predicted chunks and the reference.
    `max_depth_offset`: policy_node's, for a policy that takes depth."""
    from tqdm import tqdm

    if latency not in LATENCIES:
        raise ValueError(f"latency must be one of {LATENCIES}, got {latency!r}")
    if instruction is None and "instruction" not in info.roles:
        raise ReplayError(
            f"{info.path}: no instruction topic in the bag; give one with --instruction TEXT "
            f"(or --map instruction=TOPIC). The bag has:\n{info.table()}"
        )
    schedule = InferenceSchedule(schedule_config)
    cameras = list(runtime.camera_names)
    result = ReplayResult(info, instruction or "", Recording())
    use_actions_as_pose = "ee_pose" not in info.roles
    worker = {"free_at": -np.inf, "pending": instruction, "now": -np.inf}
    depth_roles = [depth_role(c) for c in cameras] if runtime.config.use_depth else []
    depth = DepthFrames(cameras, [info.roles.get(r, "") for r in depth_roles], max_depth_offset) if depth_roles \
        else None

    def busy(seconds_wall: float) -> float:
        return seconds_wall if latency == "measured" else 0.0

    def run_worker(until: float, inclusive: bool) -> None:
        """Let the worker act at every moment up to `until` (the next message's receipt)."""
        while True:
            t = max(worker["now"], worker["free_at"])
            if t > until or (t == until and not inclusive):
                return
            if worker["pending"] is not None:
                text, worker["pending"] = worker["pending"], None
                t0 = time.perf_counter()
                try:
                    runtime.set_instruction(text)  # also resets the streaming history
                except ValueError as err:  # e.g. the checkpoint's gate refuses the recorded instruction
                    raise ValueError(f"{info.path}: {err}") from err
                worker["free_at"] = t + busy(time.perf_counter() - t0)
                schedule.restart()
                result.instruction = result.instruction or text
                continue
            if runtime.instruction is None:
                return
            wake = schedule.next_due(t)
            if wake > until or (wake == until and not inclusive):
                return
            observation = schedule.choose(wake)
            paired = depth.pair(observation.stamps) if depth is not None and not isinstance(observation, str) else ()
            if isinstance(observation, str) or isinstance(paired, str):
                worker["now"] = wake
                return  # nothing changes until the next message
            schedule.consume(observation, wake)
            t0 = time.perf_counter()
            inputs = {"images": dict(zip(cameras, observation.images)), "proprio": observation.proprio,
                      "stamp": observation.stamp}
            if depth is not None:
                inputs["depth"] = dict(zip(cameras, paired))
            chunk = runtime.step(inputs)
            elapsed = time.perf_counter() - t0
            published = wake + busy(elapsed)
            worker["free_at"] = published
            schedule.chunk_published(chunk.stamp)
            result.chunks.append(
                PredictedChunk(
                    stamp=chunk.stamp,
                    published=published,
                    receipt=observation.receipt,
                    dt=chunk.dt,
                    actions=chunk.actions,
                    action_mode=chunk.action_mode,
                    absolute=absolute_targets(chunk.actions, chunk.action_mode, observation.proprio),
                    inference_ms=chunk.timing_ms.get("total", elapsed * 1e3),
                    images=dict(zip(cameras, observation.images)),
                )
            )

    roles = (cameras + depth_roles + ["joint_states", "ee_pose", "actions"]
             + (["instruction"] if instruction is None else []))
    total = sum(info.counts.get(info.roles[r], 0) for r in set(roles) if r in info.roles)
    started = time.perf_counter()
    with tqdm(
        total=total, desc=f"replay {info.path.name}", unit="msg", disable=not progress, dynamic_ncols=True, leave=False
    ) as bar:
        for message in read_messages(info, roles, runtime.image_size):
            bar.update(1)
            run_worker(message.receipt, inclusive=False)
            worker["now"] = max(worker["now"], message.receipt)
            role, value = message.role, message.value
            if role in cameras:
                schedule.buffer.add_frame(cameras.index(role), Frame(value, message.stamp, message.receipt))
            elif role in depth_roles:
                depth.add(depth_roles.index(role), DepthFrame(value, message.stamp))
            elif role == "instruction":
                worker["pending"] = value
            else:
                result.recording.add(role, message.stamp, value)
                if role == "ee_pose":
                    schedule.buffer.add_pose(message.stamp, value[0], value[1])
                elif role == "actions" and use_actions_as_pose:
                    position, quat = spaces.vector_to_pose(value[:6])
                    schedule.buffer.add_pose(message.stamp, position, quat)
                elif role == "joint_states":
                    fingers = finger_positions(value["names"], value["positions"])
                    if fingers is not None:
                        schedule.buffer.add_fingers(message.stamp, fingers)
            run_worker(message.receipt, inclusive=True)
    result.wall_s = time.perf_counter() - started
    result.frames_dropped = schedule.frames_dropped
    if not result.recording.finger_t:
        raise ReplayError(
            f"{info.path}: {info.roles['joint_states']} has no finger joints (names ending in "
            f"finger_joint1 / finger_joint2); the policy reads their positions. The bag has:\n{info.table()}"
        )
    return result
