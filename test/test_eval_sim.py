"""`mambavla eval-sim`: the closed loop policy -> ControllerCore -> franky -> franky-sim, in lockstep simulated time.

One workcell for the module; the command's own workcell is swapped for it."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("franky_sim")

PERIOD = 0.2  # the tiny preset's policy_period


@pytest.fixture(scope="module")
def cell():
    from mambavla.sim import Workcell

    with Workcell(task="lift", seed=0, camera_size=(48, 64), speed=0.0) as c:
        yield c


@pytest.fixture(scope="module")
def runtime():
    import torch

    from mambavla.runtime import PolicyRuntime

    torch.set_num_threads(1)
    rt = PolicyRuntime.from_preset("tiny")
    assert rt.image_size == (32, 32) and rt.policy_period == PERIOD
    return rt


@pytest.fixture(scope="module")
def evaluator(cell, runtime):
    from mambavla.sim.evaluate import SimEvaluator

    evaluator = SimEvaluator(cell, runtime, time_limit=0.5)
    yield evaluator
    evaluator.close()  # let go of franky before the workcell's server stops (see SimEvaluator.close)


class SlowRuntime:
    """A policy slower than real time: sleeps `seconds` (wall) before every step."""

    def __init__(self, runtime, seconds: float):
        self._runtime, self.seconds = runtime, seconds

    def __getattr__(self, name):
        return getattr(self._runtime, name)

    def step(self, observation):
        time.sleep(self.seconds)
        return self._runtime.step(observation)


@pytest.fixture
def shared_cell(cell, evaluator, monkeypatch):
    """The command starts and stops "its" workcell: hand it the module's. The module's evaluator lets go of its
    franky connection meanwhile: franky-sim takes one gripper connection at a time, and a second one waits for
    good (the suite hung here when a command ran after the evaluator had connected)."""
    from mambavla.sim import evaluate

    class SharedCell:
        def __init__(self, **kwargs):
            pass

        def start(self):
            return cell

        def stop(self):
            pass

    monkeypatch.setattr(evaluate, "Workcell", SharedCell)
    evaluator.close()
    yield cell
    evaluator.connect()


def test_eval_sim_command_runs_an_episode_end_to_end(shared_cell, runtime, tmp_path, capsys):
    from PIL import Image

    from mambavla import cli
    from mambavla.sim import evaluate

    cell = shared_cell
    sim0 = cell.sim_time
    limit = 1.0
    code = cli.main(
        [
            "eval-sim",
            "--preset",
            "tiny",
            "--tasks",
            "lift",
            "--episodes",
            "1",
            "--time-limit",
            str(limit),
            "--out",
            str(tmp_path),
            "--gif-episodes",
            "1",
            "--json",
            "--torch-threads",
            "1",
            "--trace",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert printed == summary
    assert summary["preset"] == "tiny" and summary["checkpoint"] is None
    assert (summary["backend"], summary["dtype"], summary["device"]) == (
        "torch",
        "float32",
        "cpu",
    )  # auto: fp32 on a CPU
    lift = summary["tasks"]["lift"]
    for key in (
        "success_rate",
        "episodes",
        "mean_episode_sim_seconds",
        "chunks_produced",
        "chunks_accepted",
        "chunks_rejected",
        "rows_clamped",
    ):
        assert math.isfinite(lift[key]), key
    for key in ("p50", "p95", "p99"):
        assert math.isfinite(lift["inference_ms"][key]) and lift["inference_ms"][key] > 0
    assert lift["episodes"] == 1 and lift["success_rate"] == 0.0 and lift["successes"] == 0
    lo, hi = lift["ci95"]
    assert lo == 0.0 and 0.7 < hi < 0.85  # Wilson, 0 of 1
    assert summary["mean_success_rate"] == 0.0
    episode = lift["episodes_detail"][0]
    # written as the episode ended, so a run that dies later keeps it
    assert [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()] == [episode]
    assert episode["error"] == ""
    assert episode["end"] == "timeout" and episode["success"] is False
    assert episode["seed"] == 1_000_000 and episode["instruction"]
    # which cube the hand went for, against the one named
    assert f"the {episode['cube']} " in episode["instruction"] and set(episode["closest_m"]) == {"red", "green", "blue"}
    assert episode["approached_cube"] == min(episode["closest_m"], key=episode["closest_m"].get)
    assert lift["approached_named_cube_rate"] == float(episode["approached_cube"] == episode["cube"])
    # every chunk the policy produced was judged by the controller, one observation per policy period
    assert lift["chunks_produced"] == round(limit / PERIOD)
    assert lift["chunks_accepted"] + lift["chunks_rejected"] == lift["chunks_produced"]
    assert sum(lift["rejections_by_kind"].values()) == lift["chunks_rejected"]
    # simulated time ran for the limit (one 10 ms tick of slack), whatever the wall time was
    assert episode["sim_seconds"] == pytest.approx(limit, abs=0.011)
    assert cell.sim_time - sim0 >= limit
    assert sum(lift["controller_states"].values()) == pytest.approx(limit * summary["control_rate_hz"], abs=2)
    assert summary["sim_real_factor"] > 0 and summary["wall_seconds"] > 0
    with Image.open(tmp_path / "success.png") as png:
        png.load()
        assert png.size[0] > 100
    with Image.open(tmp_path / "episodes_lift.gif") as gif:
        assert gif.n_frames == lift["chunks_produced"]
        gif.seek(gif.n_frames - 1)
        assert np.asarray(gif.convert("RGB")).std() > 5  # a rendered scene, not a blank frame
    # the per-tick trace: one row per control tick, the hand where the controller sent it, the cube on the table
    trace = np.load(tmp_path / "traces" / "lift_1000000.npz")
    assert set(trace.files) == set(evaluate.TRACE_COLUMNS)
    assert len(trace["t"]) == sum(lift["controller_states"].values())
    assert np.all(np.diff(trace["t"]) == pytest.approx(1 / summary["control_rate_hz"], abs=1e-6))
    target = np.stack([trace[f"target_{a}"] for a in "xyz"], 1)
    hand = np.stack([trace[f"hand_{a}"] for a in "xyz"], 1)
    assert np.linalg.norm(target - hand, axis=1).max() < 0.02
    assert np.linalg.norm(hand[0] - hand[-1]) < 0.05 and 0.2 < hand[:, 2].min()  # the untrained policy moved little
    assert trace["cube_z"] == pytest.approx(0.02, abs=0.002)  # resting on the table, cube_half above it
    assert np.linalg.norm([trace["cube_x"][0] - trace["hand_x"][0], trace["cube_y"][0] - trace["hand_y"][0]]) > 0.03
    assert trace["finger_width"].min() > 0.07 and int(trace["closed"].sum()) == 0 == episode["gripper_commands"]
    with Image.open(tmp_path / "traces" / "lift_1000000.png") as png:
        png.load()
        assert png.size[0] > 500


def test_eval_sim_runs_the_policy_as_an_fp16_onnx_graph(shared_cell, tmp_path, capsys):
    """--dtype fp16 with --backend onnx: the closed loop on the fp16 graph (scan and SSM state fp32), and the run
    says so; a precision the backend does not run is refused before the workcell starts."""
    pytest.importorskip("onnxruntime")
    from mambavla import cli

    args = [
        "eval-sim",
        "--preset",
        "tiny",
        "--tasks",
        "lift",
        "--episodes",
        "1",
        "--time-limit",
        "0.4",
        "--gif-episodes",
        "0",
        "--json",
        "--torch-threads",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert cli.main(args + ["--backend", "onnx", "--dtype", "fp16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["backend"], summary["dtype"]) == ("onnx", "float16")
    lift = summary["tasks"]["lift"]
    assert lift["chunks_produced"] == 2 and lift["chunks_accepted"] + lift["chunks_rejected"] == 2
    assert lift["episodes_detail"][0]["error"] == ""
    refused = tmp_path / "refused"
    for backend, dtype in (("onnx", "bf16"), ("torch", "fp16")):
        assert cli.main(args[:-1] + [str(refused), "--backend", backend, "--dtype", dtype]) == 2
        assert f"dtype {dtype} is not a precision of the {backend} backend" in capsys.readouterr().err
    assert not refused.exists()  # refused before a policy was loaded or an output written


def test_slow_policy_observes_every_policy_period_of_sim_time(evaluator, runtime, cell):
    """The simulator waits for a policy slower than real time (0.6 s a step, over libfranka's keep-alive):
    observations 0.2 s of simulated time apart, chunks submitted at their observation's time, franky intact."""
    evaluator.runtime = SlowRuntime(runtime, 0.6)
    keepalive0 = cell.keepalive_steps
    try:
        result = evaluator.run_episode("lift", 1_000_001)
    finally:
        evaluator.runtime = runtime
    assert result.error == ""
    assert result.end == "timeout"
    stamps = np.array(result.observation_stamps)
    assert len(stamps) == 3  # t = 0, 0.2, 0.4 of a 0.5 s episode
    np.testing.assert_allclose(np.diff(stamps), PERIOD, atol=1e-6)
    assert result.submit_delays == [0.0] * 3
    # the closest approach to each cube is at most the hand's distance to it now (0.1 s after the last observation)
    hand, cubes = cell.robot_state().ee_position, cell.scene_state().cube_pos
    for cube, closest in result.closest.items():
        assert 0.05 < closest <= np.linalg.norm(cubes[cube] - hand) + 0.01, cube
    assert cell.keepalive_steps > keepalive0  # 1.8 s held in total, never more than MAX_HOLD at once
    # the connection survived the long holds: a normal episode runs on it
    again = evaluator.run_episode("lift", 1_000_002)
    assert again.error == "" and again.end == "timeout" and again.chunks_produced == 3


def test_emulated_latency_delays_submission_in_sim_time(evaluator, monkeypatch):
    monkeypatch.setattr(evaluator, "latency", 0.3)  # the server takes one franky client: reuse the evaluator's
    monkeypatch.setattr(evaluator, "time_limit", 0.9)
    result = evaluator.run_episode("push-left", 1_000_000)
    assert result.error == ""
    assert result.end == "timeout"
    # an inference of 0.3 s skips the observation at 0.2 s: observations every 0.4 s, each chunk 0.3 s late
    np.testing.assert_allclose(np.diff(result.observation_stamps), 2 * PERIOD, atol=1e-6)
    np.testing.assert_allclose(result.submit_delays, 0.3, atol=1e-6)
    assert result.chunks_accepted + result.chunks_rejected == len(result.submit_delays)


def test_controller_limits_come_from_the_node_parameter_files(tmp_path):
    from mambavla.control.config import TrackingParams, controller_core, load_params

    override = tmp_path / "tight.yaml"
    override.write_text(
        "controller_node:\n  ros__parameters:\n    max_linear_speed: 0.1\n    rate_hz: 50.0\n"
        "    workspace_min: [0.3, -0.2, 0.05]\n"
    )
    params = load_params(("controller.yaml", "controller_sim.yaml", str(override)))
    core = controller_core(params)
    assert core.limits.max_linear_speed == 0.1 and core.limits.workspace_min == (0.3, -0.2, 0.05)
    assert core.limits.max_start_offset == 0.10 and core.stop_after == 5.0  # from controller.yaml
    assert TrackingParams.from_params(params).rate_hz == 50.0
    assert TrackingParams.from_params(load_params()).rate_hz == 100.0  # controller_sim.yaml over controller.yaml


class FailingRuntime(SlowRuntime):
    """A policy whose first step raises: an episode that ends in an error mid-episode."""

    def __init__(self, runtime):
        super().__init__(runtime, 0.0)
        self.failed = False

    def step(self, observation):
        if not self.failed:
            self.failed = True
            raise RuntimeError("injected failure")
        return self._runtime.step(observation)


def test_an_episode_error_restarts_the_simulation_server_and_the_next_episode_runs(evaluator, runtime, cell):
    server = cell._server
    evaluator.runtime = FailingRuntime(runtime)
    try:
        failed = evaluator.run_episode("lift", 1_000_003)
        assert failed.end == "error" and "injected failure" in failed.error
        assert cell._server is not None and cell._server is not server  # a fresh server, not a reconnect to the old one
        again = evaluator.run_episode("lift", 1_000_004)
    finally:
        evaluator.runtime = runtime
    assert again.error == "" and again.end == "timeout" and again.chunks_produced == 3


def test_merge_runs_joins_chunks_and_lets_a_rerun_replace_only_an_episode_the_host_failed(tmp_path):
    from mambavla.sim.evaluate import EpisodeResult, merge_runs

    def run(name, *episodes):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "episodes.jsonl").write_text("".join(json.dumps(e.as_dict()) + "\n" for e in episodes))
        return folder

    def ok(task, seed, success):
        end = "success" if success else "timeout"
        return EpisodeResult(task, seed, success=success, end=end, cube="red", closest={"red": 0.01, "blue": 0.2})

    failed = EpisodeResult("place", 1_000_001, end="error", error="NetworkException: libfranka: UDP receive: Timeout")
    a = run("a", ok("lift", 1_000_000, True), ok("lift", 1_000_001, False), ok("place", 1_000_000, True), failed)
    b = run("b", ok("place", 1_000_001, True))
    (b / "eval.json").write_text(
        json.dumps({"checkpoint": "C", "seeds": [1_000_001, 1_000_001], "gripper_open_delay_s": 0.3})
    )
    summary = merge_runs([a, b])
    assert summary["runs"][str(b)]["gripper_open_delay_s"] == 0.3 and summary["runs"][str(b)]["checkpoint"] == "C"
    assert summary["runs"][str(a)]["gripper_open_delay_s"] is None  # no eval.json: unknown, not a default
    assert summary["tasks"]["lift"]["successes"] == 1 and summary["tasks"]["lift"]["episodes"] == 2
    assert (
        summary["tasks"]["place"]["successes"] == 2 and summary["tasks"]["place"]["episodes"] == 2
    )  # the re-run counts
    assert summary["tasks"]["place"]["approached_named_cube_rate"] == 1.0
    assert summary["replaced_errors"] == ["place seed 1000001: NetworkException: libfranka: UDP receive: Timeout"]
    assert summary["mean_success_rate"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="lift seed 1000000"):  # a policy's own result is never replaced
        merge_runs([a, b, run("c", ok("lift", 1_000_000, False))])
    moved = run("moved", ok("place", 1_000_002, True))
    (moved / "eval.json").write_text(json.dumps({"cell": "moved"}))
    (a / "eval.json").write_text(json.dumps({"cell": "sim"}))
    with pytest.raises(ValueError, match="the runs differ in cell"):  # another cell measures something else
        merge_runs([a, moved])


def test_compare_evals_tables_each_policy_on_the_seeds_all_ran_and_draws_the_chart(tmp_path):
    import subprocess
    import sys

    from mambavla.sim.evaluate import EpisodeResult, summarize

    def evaluated(name, results):  # task -> [success per seed from 1000000]
        folder = tmp_path / name
        folder.mkdir()
        by_task = {
            task: [
                EpisodeResult(
                    task,
                    1_000_000 + i,
                    success=won,
                    end="success" if won else "timeout",
                    cube="red",
                    closest={"red": 0.01},
                )
                for i, won in enumerate(wins)
            ]
            for task, wins in results.items()
        }
        (folder / "eval.json").write_text(json.dumps(summarize(by_task)))
        return folder

    long = evaluated("long", {"lift": [True, True, False, False], "place": [False, True, True, True]})
    short = evaluated("short", {"lift": [False, True]})
    out, script = tmp_path / "cmp", str(Path(__file__).resolve().parents[1] / "scripts" / "compare_evals.py")
    done = subprocess.run(
        [sys.executable, script, str(out), f"stream={long}", f"window={short}", "--seeds-below", "1000002"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    policies = json.loads(out.with_suffix(".json").read_text())["policies"]
    assert (
        policies["stream"]["lift"]["successes"] == 2 and policies["stream"]["lift"]["episodes"] == 2
    )  # seeds 1000000-01 only
    assert policies["stream"]["place"]["successes"] == 1 and policies["stream"]["place"]["seeds"] == [
        1_000_000,
        1_000_001,
    ]
    assert list(policies["window"]) == ["lift"] and policies["window"]["lift"]["success_rate"] == 0.5
    assert 0 < policies["window"]["lift"]["ci95"][0] < 0.5 < policies["window"]["lift"]["ci95"][1] < 1
    assert out.with_suffix(".png").stat().st_size > 10_000
    bad = subprocess.run([sys.executable, script, str(out), f"x={tmp_path / 'none'}"], capture_output=True, text=True)
    assert bad.returncode == 2 and "expected NAME=EVAL_DIR with EVAL_DIR/eval.json" in bad.stderr


def test_precision_parity_records_a_closed_loop_and_compares_precisions(shared_cell, tmp_path):
    """scripts/precision_parity.py: the observations of one eval-sim episode, streamed through each precision."""
    import argparse
    import importlib.util

    import torch

    pytest.importorskip("onnxruntime")
    from mambavla.model.checkpoint import save_checkpoint
    from mambavla.model.config import preset
    from mambavla.model.modeling_mambavla import MambaVLA

    spec = importlib.util.spec_from_file_location(
        "precision_parity", Path(__file__).resolve().parents[1] / "scripts" / "precision_parity.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.manual_seed(0)
    checkpoint = str(save_checkpoint(MambaVLA(preset("tiny")), tmp_path / "tiny"))
    frames = tmp_path / "frames.npz"
    recorded = script.record(
        argparse.Namespace(checkpoint=checkpoint, out=str(frames), task="lift", seed=0, seconds=1.0)
    )
    assert (
        recorded["steps"] == round(1.0 / PERIOD) and recorded["seed"] == 1_000_000 and "cube" in recorded["instruction"]
    )
    data = np.load(frames)
    assert data["image_front"].shape == (5, 32, 32, 3) and data["image_front"].dtype == np.uint8  # at the policy's size
    assert data["proprio"].shape == (5, 8) and str(data["instruction"]) == recorded["instruction"]
    result = script.compare(
        argparse.Namespace(
            checkpoint=checkpoint, frames=str(frames), out=str(tmp_path / "cmp"), device="cpu", compile=False
        )
    )
    fp32, fp16 = result["modes"]["onnx fp32 cpu"], result["modes"]["onnx fp16 cpu"]
    assert fp32["max_abs"] < 1e-4 < fp16["max_abs"] < 5e-2  # the fp16 graph rounds; the fp32 one does not
    assert result["modes"]["torch bf16 cpu"]["max_abs"] > 1e-4  # and so does torch in bf16
    assert set(fp16["per_action_max_abs"]) == set(result["action_names"]) and fp16["position_max_abs_mm"] > 0
    assert json.loads((tmp_path / "cmp" / "precision.json").read_text()) == result
    assert (tmp_path / "cmp" / "precision.png").stat().st_size > 10_000


def test_held_out_wordings_give_the_policy_the_seeds_task_in_a_wording_training_never_had(evaluator, monkeypatch):
    from mambavla.sim.evaluate import SimEvaluator
    from mambavla.sim.tasks import held_out_instruction, sample_episode, trained_instructions

    given = []
    monkeypatch.setattr(evaluator.runtime, "set_instruction", given.append)
    monkeypatch.setattr(evaluator, "wordings", "held-out")
    seeds = (1_000_005, 1_000_006)
    results = [evaluator.run_episode("place", s) for s in seeds]
    for s, r, text in zip(seeds, results, given):
        spec, _ = sample_episode("place", s, evaluator.cell.config)
        assert text == r.instruction == held_out_instruction(spec, s) != spec.instruction
        assert text not in trained_instructions() and spec.cube in text and spec.plate in text
    with pytest.raises(ValueError, match="wordings must be one of trained, held-out"):
        SimEvaluator(evaluator.cell, evaluator.runtime, wordings="new")


def test_a_refused_instruction_ends_the_episode_as_refused_without_touching_franky(evaluator, cell, monkeypatch):
    def refuse(text):
        raise ValueError(f"instruction {text!r}: it is outside what the policy was trained for")

    monkeypatch.setattr(evaluator.runtime, "set_instruction", refuse)
    server, robot = cell._server, evaluator.robot
    result = evaluator.run_episode("lift", 1_000_007)
    assert (result.success, result.end) == (False, "refused") and "outside what the policy" in result.error
    assert cell._server is server and evaluator.robot is robot  # no reconnect: nothing failed on franky's side
    assert result.chunks_produced == 0
