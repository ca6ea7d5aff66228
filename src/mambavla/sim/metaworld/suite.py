"""Meta-World MT50 as LeRobot and the SmolVLA paper run it: the 50 tasks, one instruction each, the
difficulty groups, the camera, and what the policy observes and commands.

The instructions and groups are LeRobot's (`src/lerobot/envs/metaworld_config.json`, Apache-2.0):
push-v3 and push-back-v3 share one instruction. Each task is an `MT1(task, seed=42)` environment whose
object and goal positions come from the seed given to `reset`; demonstrations use seeds 0, 1, ... and
evaluation `EVAL_SEED_BASE` + 0, 1, ... so no evaluated layout was seen in training.

Observation: the `corner2` camera moved to `CAMERA_POS`, rendered at 480 x 480 and flipped on both axes
(MuJoCo renders that camera upside down and mirrored), resized to the policy's size with INTER_AREA as
every frame the policy sees; proprio 4-D, `obs[:4]` of the environment: hand position (m) and the
gripper's opening (0 closed .. 1 open). Action 4-D in [-1, 1]: hand displacement (x, y, z; the
environment scales it by 1/100 m) and the gripper effort (+1 closes). Actions are those deltas as they
are, so a policy trained on them runs in the `absolute` action mode (no pose arithmetic is applied).
"""

from __future__ import annotations

DT = 0.0125  # s per environment step: 5 MuJoCo steps of 2.5 ms (80 Hz)
MAX_STEPS = 500  # per episode (MT1's max_path_length); an episode ends earlier at success
BENCHMARK_SEED = 42  # MT1(task, seed): the task's parameters, as LeRobot builds it
EVAL_SEED_BASE = 1_000_000  # first reset seed of evaluation episodes
CAMERA = "corner2"
CAMERA_POS = (0.75, 0.075, 0.7)
RENDER_SIZE = 480  # px, square, as LeRobot's observation; the policy resizes
DEFAULT_STRIDE = 4  # environment steps per policy frame: the policy observes at 20 Hz
PROPRIO_NAMES = ("hand_x", "hand_y", "hand_z", "gripper_open")
ACTION_NAMES = ("dx", "dy", "dz", "grip")
GROUP_NAMES = ("easy", "medium", "hard", "very_hard")

GROUPS: dict[str, tuple[str, ...]] = {
    "easy": (
        "button-press-v3",
        "button-press-topdown-v3",
        "button-press-topdown-wall-v3",
        "button-press-wall-v3",
        "coffee-button-v3",
        "dial-turn-v3",
        "door-close-v3",
        "door-lock-v3",
        "door-open-v3",
        "door-unlock-v3",
        "drawer-close-v3",
        "drawer-open-v3",
        "faucet-close-v3",
        "faucet-open-v3",
        "handle-press-v3",
        "handle-press-side-v3",
        "handle-pull-v3",
        "handle-pull-side-v3",
        "lever-pull-v3",
        "plate-slide-v3",
        "plate-slide-back-v3",
        "plate-slide-back-side-v3",
        "plate-slide-side-v3",
        "reach-v3",
        "reach-wall-v3",
        "window-close-v3",
        "window-open-v3",
        "peg-unplug-side-v3",
    ),
    "medium": (
        "basketball-v3",
        "bin-picking-v3",
        "box-close-v3",
        "coffee-pull-v3",
        "coffee-push-v3",
        "hammer-v3",
        "peg-insert-side-v3",
        "push-wall-v3",
        "soccer-v3",
        "sweep-v3",
        "sweep-into-v3",
    ),
    "hard": (
        "assembly-v3",
        "hand-insert-v3",
        "pick-out-of-hole-v3",
        "pick-place-v3",
        "push-v3",
        "push-back-v3",
    ),
    "very_hard": (
        "shelf-place-v3",
        "disassemble-v3",
        "stick-pull-v3",
        "stick-push-v3",
        "pick-place-wall-v3",
    ),
}

# task -> (instruction, scripted expert class in metaworld.policies)
TASKS: dict[str, tuple[str, str]] = {
    "button-press-v3": ("Press a button", "SawyerButtonPressV3Policy"),
    "button-press-topdown-v3": ("Press a button from the top", "SawyerButtonPressTopdownV3Policy"),
    "button-press-topdown-wall-v3": (
        "Bypass a wall and press a button from the top",
        "SawyerButtonPressTopdownWallV3Policy",
    ),
    "button-press-wall-v3": ("Bypass a wall and press a button", "SawyerButtonPressWallV3Policy"),
    "coffee-button-v3": ("Push a button on the coffee machine", "SawyerCoffeeButtonV3Policy"),
    "dial-turn-v3": ("Rotate a dial 180 degrees", "SawyerDialTurnV3Policy"),
    "door-close-v3": ("Close a door with a revolving joint", "SawyerDoorCloseV3Policy"),
    "door-lock-v3": ("Lock the door by rotating the lock clockwise", "SawyerDoorLockV3Policy"),
    "door-open-v3": ("Open a door with a revolving joint", "SawyerDoorOpenV3Policy"),
    "door-unlock-v3": ("Unlock the door by rotating the lock counter-clockwise", "SawyerDoorUnlockV3Policy"),
    "drawer-close-v3": ("Push and close a drawer", "SawyerDrawerCloseV3Policy"),
    "drawer-open-v3": ("Open a drawer", "SawyerDrawerOpenV3Policy"),
    "faucet-close-v3": ("Rotate the faucet clockwise", "SawyerFaucetCloseV3Policy"),
    "faucet-open-v3": ("Rotate the faucet counter-clockwise", "SawyerFaucetOpenV3Policy"),
    "handle-press-v3": ("Press a handle down", "SawyerHandlePressV3Policy"),
    "handle-press-side-v3": ("Press a handle down sideways", "SawyerHandlePressSideV3Policy"),
    "handle-pull-v3": ("Pull a handle up", "SawyerHandlePullV3Policy"),
    "handle-pull-side-v3": ("Pull a handle up sideways", "SawyerHandlePullSideV3Policy"),
    "lever-pull-v3": ("Pull a lever down 90 degrees", "SawyerLeverPullV3Policy"),
    "plate-slide-v3": ("Slide a plate into a cabinet", "SawyerPlateSlideV3Policy"),
    "plate-slide-back-v3": ("Get a plate from the cabinet", "SawyerPlateSlideBackV3Policy"),
    "plate-slide-back-side-v3": ("Get a plate from the cabinet sideways", "SawyerPlateSlideBackSideV3Policy"),
    "plate-slide-side-v3": ("Slide a plate into a cabinet sideways", "SawyerPlateSlideSideV3Policy"),
    "reach-v3": ("Reach a goal position", "SawyerReachV3Policy"),
    "reach-wall-v3": ("Bypass a wall and reach a goal", "SawyerReachWallV3Policy"),
    "window-close-v3": ("Push and close a window", "SawyerWindowCloseV3Policy"),
    "window-open-v3": ("Push and open a window", "SawyerWindowOpenV3Policy"),
    "peg-unplug-side-v3": ("Unplug a peg sideways", "SawyerPegUnplugSideV3Policy"),
    "basketball-v3": ("Dunk the basketball into the basket", "SawyerBasketballV3Policy"),
    "bin-picking-v3": ("Grasp the puck from one bin and place it into another bin", "SawyerBinPickingV3Policy"),
    "box-close-v3": ("Grasp the cover and close the box with it", "SawyerBoxCloseV3Policy"),
    "coffee-pull-v3": ("Pull a mug from a coffee machine", "SawyerCoffeePullV3Policy"),
    "coffee-push-v3": ("Push a mug under a coffee machine", "SawyerCoffeePushV3Policy"),
    "hammer-v3": ("Hammer a screw on the wall", "SawyerHammerV3Policy"),
    "peg-insert-side-v3": ("Insert a peg sideways", "SawyerPegInsertionSideV3Policy"),
    "push-wall-v3": ("Bypass a wall and push a puck to a goal", "SawyerPushWallV3Policy"),
    "soccer-v3": ("Kick a soccer into the goal", "SawyerSoccerV3Policy"),
    "sweep-v3": ("Sweep a puck off the table", "SawyerSweepV3Policy"),
    "sweep-into-v3": ("Sweep a puck into a hole", "SawyerSweepIntoV3Policy"),
    "assembly-v3": ("Pick up a nut and place it onto a peg", "SawyerAssemblyV3Policy"),
    "hand-insert-v3": ("Insert the gripper into a hole", "SawyerHandInsertV3Policy"),
    "pick-out-of-hole-v3": ("Pick up a puck from a hole", "SawyerPickOutOfHoleV3Policy"),
    "pick-place-v3": ("Pick and place a puck to a goal", "SawyerPickPlaceV3Policy"),
    "push-v3": ("Push the puck to a goal", "SawyerPushV3Policy"),
    "push-back-v3": ("Push the puck to a goal", "SawyerPushBackV3Policy"),
    "shelf-place-v3": ("Pick and place a puck onto a shelf", "SawyerShelfPlaceV3Policy"),
    "disassemble-v3": ("Pick a nut out of a peg", "SawyerDisassembleV3Policy"),
    "stick-pull-v3": ("Grasp a stick and pull a box with the stick", "SawyerStickPullV3Policy"),
    "stick-push-v3": ("Grasp a stick and push a box using the stick", "SawyerStickPushV3Policy"),
    "pick-place-wall-v3": ("Pick a puck, bypass a wall and place the puck", "SawyerPickPlaceWallV3Policy"),
}


def config_overrides() -> dict:
    """What a preset changes to read Meta-World: its proprio and action layouts (the grounding head needs
    the workcell's cube positions, which Meta-World has not)."""
    return {"proprio_names": PROPRIO_NAMES, "action_names": ACTION_NAMES, "grounding_head": False}


def instruction(task: str) -> str:
    return TASKS[check_task(task)][0]


def group_of(task: str) -> str:
    return next(g for g, tasks in GROUPS.items() if check_task(task) in tasks)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(
            f"unknown Meta-World task {task!r}; names end in -v3, e.g. {next(iter(TASKS))!r} "
            f"(or a group: {', '.join(GROUP_NAMES)}, all)"
        )
    return task


def resolve(names: list[str] | tuple[str, ...]) -> list[str]:
    """Task names, group names (easy, medium, hard, very_hard) and `all` -> the tasks, in suite order, once each."""
    chosen: set[str] = set()
    for name in names:
        if name == "all":
            chosen.update(TASKS)
        elif name in GROUPS:
            chosen.update(GROUPS[name])
        else:
            chosen.add(check_task(name))
    if not chosen:
        raise ValueError("no Meta-World tasks named; give task names, groups or all")
    return [t for t in TASKS if t in chosen]
