"""Task sampling and success predicates, on hand-placed states (no simulator needed)."""

import numpy as np
import pytest

from mambavla.sim.config import CUBE_COLOURS, EVAL_SEED_BASE, WorkcellConfig
from mambavla.sim.tasks import (
    SceneState,
    TaskMonitor,
    TaskSpec,
    eval_seeds,
    other_cube_instructions,
    predicate,
    resolve_task,
    sample_episode,
)

CONFIG = WorkcellConfig()
H = CONFIG.cube_half


def state(red=(0.5, 0.0, H), width=0.08, t=0.0, yellow=(0.45, 0.15, 2 * CONFIG.plate_half_height)):
    cubes = {c: np.array([0.4, -0.2 + 0.2 * i, H]) for i, c in enumerate(CUBE_COLOURS)}
    cubes["red"] = np.array(red, dtype=float)
    plates = {"yellow": np.array(yellow, dtype=float), "purple": np.array([0.6, -0.15, 2 * CONFIG.plate_half_height])}
    return SceneState(cubes, plates, width, t)


def test_lift_predicate_needs_five_centimetres_of_clearance():
    lift = TaskSpec("lift", "red")
    assert not predicate(lift, state(), CONFIG)  # resting on the table
    assert not predicate(lift, state(red=(0.5, 0.0, H + 0.045)), CONFIG)
    assert predicate(lift, state(red=(0.5, 0.0, H + 0.051)), CONFIG)
    assert not predicate(TaskSpec("lift", "green"), state(red=(0.5, 0.0, 0.3)), CONFIG)  # wrong cube


def test_place_predicate_needs_cube_resting_on_the_plate_and_released():
    place = TaskSpec("place", "red", "yellow")
    on_plate = (0.46, 0.14, 2 * CONFIG.plate_half_height + H)
    assert predicate(place, state(red=on_plate), CONFIG)
    assert not predicate(place, state(red=on_plate, width=0.04), CONFIG)  # still held by the fingers
    assert not predicate(place, state(red=(0.46, 0.14, 0.1)), CONFIG)  # hovering above it
    assert not predicate(place, state(red=(0.45, 0.15 + CONFIG.plate_radius + 0.01, H)), CONFIG)  # beside it
    assert not predicate(TaskSpec("place", "red", "purple"), state(red=on_plate), CONFIG)


def test_push_predicates_use_the_robots_left_as_positive_y():
    assert predicate(TaskSpec("push-left", "red"), state(red=(0.5, 0.18, H)), CONFIG)
    assert not predicate(TaskSpec("push-right", "red"), state(red=(0.5, 0.18, H)), CONFIG)
    assert predicate(TaskSpec("push-right", "red"), state(red=(0.5, -0.2, H)), CONFIG)
    assert not predicate(TaskSpec("push-left", "red"), state(red=(0.5, 0.10, H)), CONFIG)
    assert not predicate(TaskSpec("push-left", "red"), state(red=(0.5, 0.2, 0.1)), CONFIG)  # carried, not pushed


def test_task_monitor_requires_the_predicate_to_hold():
    monitor = TaskMonitor(TaskSpec("lift", "red"), CONFIG)
    up = (0.5, 0.0, 0.15)
    assert not monitor.update(state(red=up, t=1.0))
    assert not monitor.update(state(red=up, t=1.3))
    assert not monitor.update(state(t=1.35))  # dropped: the clock restarts
    assert not monitor.update(state(red=up, t=1.4))
    assert not monitor.update(state(red=up, t=1.85))
    assert monitor.update(state(red=up, t=1.9))
    assert monitor.success_time == pytest.approx(1.9)
    assert monitor.update(state(t=2.0))  # success latches


def test_layouts_are_seeded_separated_and_instructions_name_the_objects():
    for seed in range(60):
        spec, layout = sample_episode("all", seed, CONFIG)
        again, layout2 = sample_episode("all", seed, CONFIG)
        assert (spec, layout) == (again, layout2)
        points = [np.array(p[:2]) for p in layout.cubes.values()] + [np.array(p) for p in layout.plates.values()]
        dists = [np.linalg.norm(a - b) for i, a in enumerate(points) for b in points[i + 1 :]]
        assert min(dists) >= CONFIG.min_object_distance
        assert spec.cube in spec.instruction
        if spec.family == "place":
            assert spec.plate in spec.instruction
        if spec.family.startswith("push"):
            assert spec.side in spec.instruction
            assert abs(layout.cubes[spec.cube][1]) <= CONFIG.push_lane_y
    assert sample_episode("lift", 1, CONFIG)[1] != sample_episode("lift", 2, CONFIG)[1]
    families = {resolve_task("all", s) for s in range(8)}
    assert families == {"lift", "place", "push-left", "push-right"}
    assert len({sample_episode("lift", s, CONFIG)[0].instruction for s in range(40)}) >= 6  # paraphrases vary


def test_eval_seeds_are_held_out():
    seeds = eval_seeds(40)
    assert seeds[0] == EVAL_SEED_BASE and len(set(seeds)) == 40
    with pytest.raises(ValueError, match="unknown task"):
        resolve_task("stack", 0)


def test_other_cube_instructions_swap_only_the_named_cube():
    assert other_cube_instructions("place the red cube on the purple plate") == [
        "place the green cube on the purple plate",
        "place the blue cube on the purple plate",
    ]
    assert other_cube_instructions("push the blue cube to the left side") == [
        "push the red cube to the left side",
        "push the green cube to the left side",
    ]
    assert other_cube_instructions("open the drawer") == []
