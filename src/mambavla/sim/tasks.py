"""Tasks of the workcell: what to do (a `TaskSpec` and its instruction), where things start (a seeded
`Layout`) and when it is done (success predicates on a `SceneState`, held for a while by
`TaskMonitor`). Pure numpy: no MuJoCo, no franky, so predicates test on hand-placed states.

Task families: `lift` (a cube's bottom >= 5 cm above the table, held 0.5 s), `place` (a cube resting
on a plate, gripper released), `push-left` / `push-right` (a cube pushed to the robot's left, +y, or
right, -y). `push` picks a side from the seed. Training seeds are below `EVAL_SEED_BASE`;
`eval_seeds(n)` are held out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mambavla.sim.config import CUBE_COLOURS, EVAL_SEED_BASE, PLATE_COLOURS, WorkcellConfig

TASK_FAMILIES: tuple[str, ...] = ("lift", "place", "push-left", "push-right")
TASK_CHOICES: tuple[str, ...] = TASK_FAMILIES + ("push", "all")

_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "lift": (
        "lift the {cube} cube",
        "pick up the {cube} cube",
        "raise the {cube} block off the table",
        "grab the {cube} cube and lift it",
    ),
    "place": (
        "place the {cube} cube on the {plate} plate",
        "put the {cube} cube onto the {plate} plate",
        "move the {cube} block to the {plate} plate",
        "pick up the {cube} cube and set it down on the {plate} plate",
    ),
    "push": (
        "push the {cube} cube to the {side} side",
        "slide the {cube} cube to the {side}",
        "shove the {cube} block over to the {side}",
        "push the {cube} cube {side}",
    ),
}

# Wordings that no training episode is given (sample_episode never draws them), kept out of training: how an
# operator might word the same tasks. Other verbs, word order, an adverb for the direction, requests, the object
# named differently or by its colour alone, a typo (not capitals: the text encoder lower-cases, so they change
# nothing). `eval-sim --wordings held-out` evaluates with them.
HELD_OUT_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "lift": (
        "raise the {cube} cube",
        "could you pick up the {cube} cube",
        "take the {cube} block and raise it",
        "get the {cube} cube up in the air",
        "please lift {cube}",
        "lfit the {cube} cube",
    ),
    "place": (
        "put the {cube} block on the {plate} plate",
        "set the {cube} cube down on the {plate} disc",
        "place {cube} on {plate}",
        "could you move the {cube} cube onto the {plate} plate",
        "drop the {cube} cube onto the {plate} plate",
        "plcae the {cube} cube on the {plate} plate",
    ),
    "push": (
        "push the {cube} cube towards the {side}",
        "move the {cube} cube {side}wards",
        "slide {cube} to the {side} please",
        "could you nudge the {cube} block to the {side}",
        "shift the {cube} cube to the {side}",
        "psuh the {cube} cube to the {side} side",
    ),
}
# Instructions outside the workcell's four tasks, which a policy trained on them should refuse to act on
# (runtime/instruction_gate.py). A known cube with an unknown verb ("throw the red cube") is not among them: the
# gate lets it through.
OUTSIDE_INSTRUCTIONS: tuple[str, ...] = (
    "open the drawer", "make coffee", "wave hello", "stack the cubes", "what time is it", "pick up the sponge",
    "fold the towel", "hand me the screwdriver", "clean the table", "put the cube in the box", "lift the table",
    "open the gripper",
)
WORDINGS: tuple[str, ...] = ("trained", "held-out")  # eval-sim --wordings


def held_out_instruction(spec: TaskSpec, seed: int) -> str:
    """The task of `spec` in one of HELD_OUT_PARAPHRASES, chosen by the seed."""
    key = "push" if spec.family.startswith("push") else spec.family
    templates = HELD_OUT_PARAPHRASES[key]
    draw = np.random.default_rng([seed, 11, TASK_FAMILIES.index(spec.family)])  # push-left/-right differ per seed
    template = templates[int(draw.integers(len(templates)))]
    return template.format(cube=spec.cube, plate=spec.plate, side=spec.side)


def held_out_instructions() -> list[str]:
    """Every instruction HELD_OUT_PARAPHRASES gives, for every cube, plate and side."""
    return sorted({t.format(cube=c, plate=p, side=side) for ts in HELD_OUT_PARAPHRASES.values() for t in ts
                   for c in CUBE_COLOURS for p in PLATE_COLOURS for side in ("left", "right")})


def trained_instructions() -> list[str]:
    """Every instruction sample_episode gives: what a policy trained on workcell episodes has read."""
    return sorted({t.format(cube=c, plate=p, side=side) for ts in _PARAPHRASES.values() for t in ts
                   for c in CUBE_COLOURS for p in PLATE_COLOURS for side in ("left", "right")})


def other_cube_instructions(text: str) -> list[str]:
    """`text` with the cube colour it names replaced by each other cube colour, in CUBE_COLOURS order
    ("lift the red cube" -> ["lift the green cube", "lift the blue cube"]); [] when it names none. A
    policy that scores these as well as the true instruction is not reading which cube it was told."""
    words = text.split()
    named = [i for i, w in enumerate(words) if w in CUBE_COLOURS]
    if len(named) != 1:
        return []
    i = named[0]
    return [" ".join(words[:i] + [c] + words[i + 1:]) for c in CUBE_COLOURS if c != words[i]]


def _seeded_layouts(meta: list[dict], instructions: list[str], config: WorkcellConfig):
    """(episode index, task spec, layout) of every workcell episode whose instruction is the one its seed
    gives now (one recorded under another sampler would have another layout too)."""
    for e, (m, text) in enumerate(zip(meta, instructions)):
        task, seed = m.get("task"), m.get("seed")
        if task not in TASK_FAMILIES or not isinstance(seed, (int, np.integer)):
            continue
        spec, layout = sample_episode(task, seed, config)
        if spec.instruction == text:
            yield e, spec, layout


def named_cube_starts(meta: list[dict], instructions: list[str], config: WorkcellConfig | None = None) -> np.ndarray:
    """float [E, 2]: where the cube that each episode's instruction names started (x, y in the robot base
    frame, m), from the episode's task and seed, since layouts are seeded. NaN for an episode that is not a
    workcell episode, or whose instruction is not the one its seed gives now (recorded under another
    sampler: its layout would be wrong too)."""
    out = np.full((len(meta), 2), np.nan, np.float32)
    for e, spec, layout in _seeded_layouts(meta, instructions, config or WorkcellConfig()):
        out[e] = layout.cubes[spec.cube][:2]
    return out


def other_cube_starts(meta: list[dict], instructions: list[str],
                      config: WorkcellConfig | None = None) -> list[list[tuple[str, np.ndarray]]]:
    """Per episode, (the instruction naming another cube of its layout, where that cube started) for each
    other cube: counterfactual grounding targets, true of the same frames whatever the arm then does.
    Without them a layout seen once tells its target by itself and the colour word is never needed. []
    where `named_cube_starts` gives NaN."""
    out: list[list[tuple[str, np.ndarray]]] = [[] for _ in meta]
    for e, spec, layout in _seeded_layouts(meta, instructions, config or WorkcellConfig()):
        colours = [c for c in CUBE_COLOURS if c != spec.cube]  # other_cube_instructions' order
        out[e] = [(text, np.asarray(layout.cubes[c][:2], np.float32))
                  for c, text in zip(colours, other_cube_instructions(spec.instruction)) if c in layout.cubes]
    return out


def eval_seeds(n: int) -> list[int]:
    """The first n held-out evaluation seeds (never used by `collect` without `--eval`)."""
    return list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + n))


def is_eval_seed(seed: int) -> bool:
    return seed >= EVAL_SEED_BASE


def resolve_task(task: str, seed: int) -> str:
    """A concrete task family for `task` (which may be `push` or `all`) and this seed."""
    if task not in TASK_CHOICES:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_CHOICES)}")
    if task == "push":
        return ("push-left", "push-right")[seed % 2]
    if task == "all":
        return TASK_FAMILIES[seed % len(TASK_FAMILIES)]
    return task


@dataclass(frozen=True)
class TaskSpec:
    family: str  # one of TASK_FAMILIES
    cube: str  # colour of the cube to act on
    plate: str | None = None  # place: colour of the target plate
    instruction: str = ""

    @property
    def side(self) -> str | None:
        return {"push-left": "left", "push-right": "right"}.get(self.family)


@dataclass(frozen=True)
class Layout:
    """Initial scene: cube positions (x, y) and yaws, plate positions, arm joint configuration."""

    cubes: dict[str, tuple[float, float, float]]  # colour -> (x, y, yaw)
    plates: dict[str, tuple[float, float]]  # colour -> (x, y)
    home_q: tuple[float, ...]


@dataclass
class SceneState:
    """What the predicates need, read from MuJoCo state (world = robot base frame)."""

    cube_pos: dict[str, np.ndarray]  # colour -> (3,) centre
    plate_pos: dict[str, np.ndarray]  # colour -> (3,) centre of the plate top
    finger_width: float
    time: float = 0.0
    cube_speed: dict[str, float] = field(default_factory=dict)


def sample_episode(task: str, seed: int, config: WorkcellConfig) -> tuple[TaskSpec, Layout]:
    """Task, instruction and layout for a seed: the same seed always gives the same episode."""
    rng = np.random.default_rng(seed)
    family = resolve_task(task, seed)
    cube = str(rng.choice(CUBE_COLOURS))
    plate = str(rng.choice(PLATE_COLOURS)) if family == "place" else None
    key = "push" if family.startswith("push") else family
    template = str(rng.choice(_PARAPHRASES[key]))
    side = {"push-left": "left", "push-right": "right"}.get(family)
    spec = TaskSpec(family, cube, plate, template.format(cube=cube, plate=plate, side=side))
    return spec, _sample_layout(spec, rng, config)


def _sample_layout(spec: TaskSpec, rng: np.random.Generator, c: WorkcellConfig) -> Layout:
    names = [("cube", n) for n in CUBE_COLOURS] + [("plate", n) for n in PLATE_COLOURS]
    target = ("cube", spec.cube)
    names.remove(target)
    names.insert(0, target)  # place the target first so its constraints are cheap to meet
    if spec.plate is not None:
        names.remove(("plate", spec.plate))
        names.insert(1, ("plate", spec.plate))
    push = spec.family.startswith("push")
    # Pushing keeps a lane clear, so the other objects may also use a wider band in x.
    other_x = (c.object_x[0] - 0.06, c.object_x[1] + 0.06) if push else c.object_x
    for _ in range(200):
        placed: dict[tuple[str, str], np.ndarray] = {}
        for kind, name in names:
            for _ in range(200):
                if push and (kind, name) == target:
                    xy = np.array([rng.uniform(0.44, 0.56), rng.uniform(-c.push_lane_y, c.push_lane_y)])
                else:
                    xy = np.array([rng.uniform(*other_x), rng.uniform(*c.object_y)])
                if _fits(xy, (kind, name), placed, spec, target, c):
                    placed[(kind, name)] = xy
                    break
            else:
                break
        if len(placed) == len(names):
            break
    else:
        raise RuntimeError(f"could not sample a layout for {spec}")
    cubes = {}
    for (kind, name), p in placed.items():
        if kind == "cube":
            max_yaw = c.push_max_cube_yaw if push and (kind, name) == target else c.max_cube_yaw
            cubes[name] = (float(p[0]), float(p[1]), float(rng.uniform(-max_yaw, max_yaw)))
    plates = {n: (float(p[0]), float(p[1])) for (k, n), p in placed.items() if k == "plate"}
    home_q = tuple(float(q + rng.uniform(-c.home_q_jitter, c.home_q_jitter)) for q in c.home_q)
    return Layout(cubes, plates, home_q)


def _fits(xy: np.ndarray, key: tuple[str, str], placed: dict, spec: TaskSpec, target: tuple[str, str],
          c: WorkcellConfig) -> bool:
    """Whether an object at xy keeps its distance from the objects placed so far and out of the push lane."""
    for other, p in placed.items():
        if np.linalg.norm(xy - p) < c.min_object_distance:
            return False
        if spec.plate is not None and {key, other} == {target, ("plate", spec.plate)} and np.linalg.norm(xy - p) < 0.16:
            return False
    if spec.family.startswith("push") and key != target:
        tx, ty = placed[target]
        sign = 1.0 if spec.family == "push-left" else -1.0
        # Nothing within reach of the cube's path, nor behind it where the finger comes down.
        if abs(xy[0] - tx) < c.push_lane_clearance and sign * (xy[1] - ty) > -0.12:
            return False
    return True


def cube_lifted(state: SceneState, cube: str, config: WorkcellConfig) -> bool:
    """The cube's bottom is at least `lift_height` above the table."""
    return float(state.cube_pos[cube][2]) - config.cube_half >= config.lift_height


def cube_on_plate(state: SceneState, cube: str, plate: str, config: WorkcellConfig) -> bool:
    """The cube rests on the plate (centre over the plate, bottom near its top) and the fingers let go."""
    pos, top = state.cube_pos[cube], state.plate_pos[plate]
    over = float(np.linalg.norm(pos[:2] - top[:2])) <= config.plate_radius
    resting = abs(float(pos[2]) - config.cube_half - float(top[2])) <= 0.012
    released = state.finger_width >= 2.0 * config.cube_half + 0.006
    return over and resting and released


def cube_pushed(state: SceneState, cube: str, side: str, config: WorkcellConfig) -> bool:
    """The cube is on the table, past `push_y` on the robot's left (+y) or right (-y)."""
    pos = state.cube_pos[cube]
    on_table = float(pos[2]) <= config.cube_half + 0.012
    y = float(pos[1]) if side == "left" else -float(pos[1])
    return on_table and y >= config.push_y


def predicate(spec: TaskSpec, state: SceneState, config: WorkcellConfig) -> bool:
    if spec.family == "lift":
        return cube_lifted(state, spec.cube, config)
    if spec.family == "place":
        return cube_on_plate(state, spec.cube, spec.plate, config)
    return cube_pushed(state, spec.cube, spec.side, config)


def hold_time(spec: TaskSpec, config: WorkcellConfig) -> float:
    return {"lift": config.lift_hold, "place": config.place_hold}.get(spec.family, config.push_hold)


class TaskMonitor:
    """Success = the task's predicate held continuously for the task's hold time (simulated seconds)."""

    def __init__(self, spec: TaskSpec, config: WorkcellConfig):
        self.spec, self.config = spec, config
        self.hold = hold_time(spec, config)
        self.since: float | None = None
        self.success = False
        self.success_time: float | None = None

    def update(self, state: SceneState) -> bool:
        if predicate(self.spec, state, self.config):
            self.since = state.time if self.since is None else self.since
            if not self.success and state.time - self.since >= self.hold - 1e-9:
                self.success, self.success_time = True, state.time
        else:
            self.since = None
        return self.success
