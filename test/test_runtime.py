"""PolicyRuntime: determinism, checkpoint round trip, and clear errors for every bad input."""

import json

import numpy as np
import pytest
import torch
from observations import instruction_change_chunks

from mambavla.data.images import area_weights, resize_rgb
from mambavla.model.checkpoint import convert_checkpoint, load_checkpoint, save_checkpoint
from mambavla.runtime import ActionChunk, PolicyRuntime
from mambavla.runtime.upload import AreaResize


def _obs(runtime: PolicyRuntime, seed: int = 0, stamp: float = 12.5) -> dict:
    rng = np.random.default_rng(seed)
    h, w = runtime.image_size
    return {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in runtime.camera_names},
            "proprio": rng.normal(size=runtime.proprio_dim).astype(np.float32), "stamp": stamp}


@pytest.fixture(scope="module")
def runtime() -> PolicyRuntime:
    rt = PolicyRuntime.from_preset("tiny", seed=0)
    rt.set_instruction("lift the red cube")
    return rt


def test_step_returns_chunk_in_robot_units_with_timing(runtime):
    chunk = runtime.step(_obs(runtime))
    assert isinstance(chunk, ActionChunk)
    assert chunk.actions.shape == (runtime.chunk_size, len(runtime.action_names))
    assert chunk.actions.dtype == np.float32 and np.isfinite(chunk.actions).all()
    assert chunk.stamp == 12.5 and chunk.dt == runtime.dt
    assert chunk.action_names == runtime.action_names
    assert set(chunk.timing_ms) == {"input", "vision", "fusion", "flow", "total"}
    parts = [chunk.timing_ms[k] for k in ("input", "vision", "fusion", "flow")]
    assert min(parts) > 0
    assert chunk.timing_ms["total"] >= sum(parts) - 1e-6  # the whole call, input checks included
    np.testing.assert_allclose(chunk.times()[-1], 12.5 + (runtime.chunk_size - 1) * runtime.dt)


def test_same_seed_and_inputs_give_same_chunks():
    chunks = []
    for _ in range(2):
        rt = PolicyRuntime.from_preset("tiny", seed=7)
        rt.set_instruction("push the blue cube to the left")
        chunks.append([rt.step(_obs(rt, seed=k)).actions for k in range(3)])
    for a, b in zip(*chunks):
        np.testing.assert_array_equal(a, b)


def test_noise_scale_shrinks_the_flows_starting_noise_and_zero_makes_chunks_independent_of_the_seed():
    torch.manual_seed(3)
    model = PolicyRuntime.from_preset("tiny").model

    def chunks(seed: int, **kw) -> list[np.ndarray]:
        rt = PolicyRuntime(model, seed=seed, **kw)
        rt.set_instruction("lift the red cube")
        return [rt.step(_obs(rt, seed=k)).actions for k in range(3)]

    for a, b in zip(chunks(1, noise_scale=0.0), chunks(2, noise_scale=0.0)):
        np.testing.assert_array_equal(a, b)  # no noise: the seed no longer matters
    full, half, zero = chunks(1), chunks(1, noise_scale=0.5), chunks(1, noise_scale=0.0)
    assert not np.allclose(full[0], zero[0], atol=1e-3)
    # the same draws, halved: half-scale chunks lie between full-noise and no-noise ones (not equal to either)
    assert 0 < np.abs(half[0] - zero[0]).mean() < np.abs(full[0] - zero[0]).mean()
    # the config's value is the default
    default = PolicyRuntime(model.__class__(model.config.replace(noise_scale=0.0)), seed=5)
    assert default.noise_scale == 0.0
    with pytest.raises(ValueError, match="noise_scale"):
        PolicyRuntime(model, noise_scale=1.5)
    with pytest.raises(ValueError, match="config.noise_scale"):
        model.config.replace(noise_scale=-0.1)


def test_reset_restarts_history_and_noise(runtime):
    runtime.reset()
    first = [runtime.step(_obs(runtime, seed=k)).actions for k in range(2)]
    runtime.reset()
    again = [runtime.step(_obs(runtime, seed=k)).actions for k in range(2)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert runtime.frames_seen == 2


def test_checkpoint_round_trip_gives_identical_chunks(tmp_path):
    torch.manual_seed(1)
    rt = PolicyRuntime.from_preset("tiny", seed=3, fusion="transformer", connector="vss_l2", scan="csm")
    path = save_checkpoint(rt.model, tmp_path / "ckpt", meta={"note": "test"})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "meta.json", "model.safetensors", "stats.json"]
    loaded = PolicyRuntime.from_checkpoint(path, seed=3)
    assert loaded.config == rt.config
    for r in (rt, loaded):
        r.set_instruction("place the green cube on the red plate")
    for k in range(3):
        np.testing.assert_array_equal(rt.step(_obs(rt, seed=k)).actions, loaded.step(_obs(loaded, seed=k)).actions)
    state_a, state_b = rt.model.state_dict(), load_checkpoint(path).state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_bf16_conversion_halves_the_weights_and_loads_the_rounded_values_without_building_a_model(tmp_path):
    torch.manual_seed(1)
    model = PolicyRuntime.from_preset("tiny", seed=3).model
    fp32 = save_checkpoint(model, tmp_path / "fp32", meta={"note": "test"})
    bf16 = convert_checkpoint(fp32, tmp_path / "bf16")
    assert (bf16 / "model.safetensors").stat().st_size < 0.55 * (fp32 / "model.safetensors").stat().st_size
    meta = json.loads((bf16 / "meta.json").read_text())
    assert meta == {"note": "test", "weights_dtype": "bfloat16 (loaded as float32)"}
    assert (bf16 / "stats.json").read_text() == (fp32 / "stats.json").read_text()
    assert not (bf16 / "instructions.json").exists()  # the source is ungated
    (fp32 / "instructions.json").write_text('{"min_similarity": 0.7, "texts": ["lift the red cube"]}')
    assert (convert_checkpoint(fp32, bf16) / "instructions.json").read_text() == (
        fp32 / "instructions.json").read_text()  # the gate travels with the weights
    (fp32 / "instructions.json").unlink()
    assert not (convert_checkpoint(fp32, bf16) / "instructions.json").exists()  # no stale gate left behind
    original, loaded = model.state_dict(), load_checkpoint(bf16).state_dict()
    assert loaded.keys() == original.keys()
    for k, v in original.items():
        expected = v.to(torch.bfloat16).to(v.dtype) if v.is_floating_point() else v
        assert torch.equal(loaded[k], expected), k


def test_half_size_minilm_copy_for_the_gpu_machine_loads_through_the_environment(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mambavla.model.language import InstructionEncoder

    out = tmp_path / "minilm-fp16"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", "scripts/gpu_minilm.sh", str(out)], check=True, env=env, capture_output=True)
    assert (out / "model.safetensors").stat().st_size < 50e6  # fits a 64 MiB transfer beside the working tree
    text = "pick up the red cube"
    reference = InstructionEncoder("minilm").encode_one(text)
    monkeypatch.setenv("MAMBAVLA_MINILM_PATH", str(out))
    copy = InstructionEncoder("minilm")
    assert next(copy.model.parameters()).dtype == torch.float32
    embedding = copy.encode_one(text)
    assert embedding.shape == reference.shape and 0 < (embedding - reference).abs().max() < 2e-2


def test_missing_checkpoint_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        PolicyRuntime.from_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        PolicyRuntime.from_checkpoint(tmp_path / "empty")


def _bad(runtime, **changes):
    obs = _obs(runtime)
    for key, value in changes.items():
        if key.startswith("img_"):
            obs["images"][key[4:]] = value
        elif value is _DROP:
            del obs[key]
        else:
            obs[key] = value
    return obs


_DROP = object()


@pytest.mark.parametrize("make, message", [
    (lambda rt: _bad(rt, images={"front": np.zeros((32, 32, 3), np.uint8)}), "missing camera"),
    (lambda rt: _bad(rt, img_side=np.zeros((32, 32, 3), np.uint8)), "unknown camera"),
    (lambda rt: _bad(rt, img_front=np.zeros((32, 32, 4), np.uint8)), r"images\['front'\]: expected shape \(H, W, 3\)"),
    (lambda rt: _bad(rt, img_front=np.zeros((32, 32), np.uint8)), r"expected shape \(H, W, 3\) RGB \(the policy sees"),
    (lambda rt: _bad(rt, img_front=np.zeros((0, 32, 3), np.uint8)), r"expected shape \(H, W, 3\)"),
    (lambda rt: _bad(rt, img_front=np.zeros((9000, 1, 3), np.uint8)), r"9000 exceeds 8192 px per side"),
    (lambda rt: _bad(rt, img_front=np.zeros((4000, 6000, 3), np.uint8)),
     r"images\['front'\]: image of 72000000 bytes exceeds"),
    (lambda rt: _bad(rt, img_wrist=np.zeros((32, 32, 3), np.float32)), r"images\['wrist'\]: expected dtype uint8"),
    (lambda rt: _bad(rt, img_wrist=[[0]]), "expected a numpy array"),
    (lambda rt: _bad(rt, images=None), "images: expected a dict"),
    (lambda rt: _bad(rt, proprio=_DROP), "proprio: missing"),
    (lambda rt: _bad(rt, proprio=np.zeros(7, np.float32)), r"proprio: expected shape \(8,\)"),
    (lambda rt: _bad(rt, proprio=np.array([np.nan] + [0.0] * 7, np.float32)), "proprio: contains NaN or Inf"),
    (lambda rt: _bad(rt, proprio=np.array([np.inf] + [0.0] * 7)), "NaN or Inf"),
    (lambda rt: _bad(rt, proprio=np.zeros(8, np.int64)), "expected a float array"),
    (lambda rt: _bad(rt, stamp=float("nan")), "stamp"),
    (lambda rt: "not a dict", "observation: expected a dict"),
])
def test_bad_observation_raises_value_error_naming_the_field(runtime, make, message):
    with pytest.raises(ValueError, match=message):
        runtime.step(make(runtime))


@pytest.mark.parametrize("camera", [(48, 64), (20, 24), (31, 97)])  # shrinking, enlarging, both
def test_frames_of_any_size_are_resized_as_opencv_resizes_them(camera):
    rt = PolicyRuntime.from_preset("tiny", seed=3)
    rt.set_instruction("lift the red cube")
    obs = _obs(rt, seed=1)
    rng = np.random.default_rng(2)
    obs["images"] = {c: rng.integers(0, 256, (*camera, 3), dtype=np.uint8) for c in rt.camera_names}
    resized = {**obs, "images": {c: resize_rgb(v, rt.image_size) for c, v in obs["images"].items()}}
    got = rt.step(obs).actions
    rt.reset()
    np.testing.assert_array_equal(got, rt.step(resized).actions)


def test_area_weights_are_opencvs_inter_area():
    rng = np.random.default_rng(0)
    for source, size in [((480, 640), (128, 128)), ((100, 90), (128, 128)), ((720, 1280), (224, 224)),
                         ((7, 5), (32, 32))]:
        frame = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
        rows, cols = area_weights(source, size)
        assert rows.shape == (size[0], source[0]) and cols.shape == (source[1], size[1])
        ours = np.stack([rows @ frame[..., c].astype(np.float32) @ cols for c in range(3)], axis=-1)
        np.testing.assert_allclose(ours, resize_rgb(frame.astype(np.float32), size), atol=1e-3)
        assert np.abs(np.rint(ours) - resize_rgb(frame, size)).max() <= 1  # OpenCV's uint8 path rounds in fixed point


@pytest.mark.parametrize("text", ["", "   ", None, 42])
def test_empty_or_non_text_instruction_is_rejected(runtime, text):
    with pytest.raises(ValueError, match="instruction: expected a non-empty string"):
        runtime.set_instruction(text)


def test_instruction_longer_than_the_policy_reads_is_rejected_not_cut(runtime):
    runtime.set_instruction("lift the red cube")
    with pytest.raises(ValueError, match="tokens, this policy reads at most 32"):
        runtime.set_instruction("pick up the red cube " * 10)
    assert runtime.instruction == "lift the red cube"  # the previous instruction stays in force


def test_step_before_any_instruction_is_rejected():
    rt = PolicyRuntime.from_preset("tiny")
    with pytest.raises(ValueError, match="no instruction set"):
        rt.step(_obs(rt))


def test_unknown_preset_and_bad_config_are_rejected():
    with pytest.raises(ValueError, match="unknown preset"):
        PolicyRuntime.from_preset("huge")
    with pytest.raises(ValueError, match="config.fusion"):
        PolicyRuntime.from_preset("tiny", fusion="rnn")


def test_the_backend_is_chosen_once_from_the_options_and_options_it_cannot_honour_are_refused():
    from mambavla.runtime.backends.eager import EagerStep

    rt = PolicyRuntime.from_preset("tiny", dtype=torch.bfloat16)
    assert isinstance(rt.step_backend, EagerStep) and rt.step_backend.model is rt.model
    assert (rt.device.type, rt.dtype, rt.precision, rt.cuda_graph, rt.compile_mode) == ("cpu", torch.bfloat16,
                                                                                       "bfloat16", False, None)
    assert rt.onnx_provider is None and not rt.onnx_cuda_graph and not rt.resizes_on_device and rt._graph is None
    assert next(rt.model.parameters()).dtype == torch.bfloat16  # the model runs where the backend does
    with pytest.raises(ValueError, match="cuda_graph needs device 'cuda'"):
        PolicyRuntime.from_preset("tiny", cuda_graph=True)
    with pytest.raises(ValueError, match="backend must be 'torch' or 'onnx', got 'tensorrt'"):
        PolicyRuntime.from_preset("tiny", backend="tensorrt")
    with pytest.raises(ValueError, match="kv_capacity_frames must be >= 1"):
        PolicyRuntime.from_preset("tiny", kv_capacity_frames=0)
    with pytest.raises(ValueError, match="float64 is not a precision of the torch backend"):
        PolicyRuntime.from_preset("tiny", dtype=torch.float64)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fusion", ["mamba", "transformer"])  # the Transformer through its StaticKVCache
@pytest.mark.parametrize("history", [{"history_mode": "stream"}, {"history_mode": "window", "history_frames": 3},
                                     {"history_mode": "window", "history_frames": 1}])
def test_cuda_graph_step_matches_eager_step(history, fusion):
    chunks = {}
    for graph in (False, True):
        rt = PolicyRuntime.from_preset("tiny", device="cuda", seed=5, cuda_graph=graph, fusion=fusion, **history)
        chunks[graph] = instruction_change_chunks(rt)  # the graph's static state follows a new instruction
    for a, b in zip(chunks[False], chunks[True]):
        np.testing.assert_allclose(a, b, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_transformer_graph_stops_at_its_kv_capacity_until_reset():
    rt = PolicyRuntime.from_preset("tiny", device="cuda", fusion="transformer", cuda_graph=True, kv_capacity_frames=3)
    rt.set_instruction("lift the red cube")
    c, done = rt.config, 0
    with pytest.raises(ValueError, match="history full"):
        for done in range(100):
            rt.step(_obs(rt, seed=done))
    # room is kept for the longest instruction: a short one leaves space for a few more frames than asked
    assert 3 <= done <= 3 + c.max_instruction_tokens // c.tokens_per_frame, done
    rt.reset()
    assert np.isfinite(rt.step(_obs(rt, seed=0)).actions).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("camera", [None, (48, 64)])  # the policy's size; a camera's, resized on the GPU
def test_cuda_steps_upload_every_frame_through_pinned_buffers_made_once(graph, camera):
    # no starting noise: the CPU and CUDA generators draw different numbers, so only the inputs differ
    cpu = PolicyRuntime.from_preset("tiny", seed=5, noise_scale=0.0)
    gpu = PolicyRuntime.from_preset("tiny", device="cuda", seed=5, noise_scale=0.0, cuda_graph=graph)
    assert gpu.resizes_on_device and not cpu.resizes_on_device
    for rt in (cpu, gpu):
        rt.set_instruction("lift the red cube")
    pointers, last = None, None
    for k in range(4):
        obs = _obs(gpu, seed=k)
        if camera is not None:
            rng = np.random.default_rng(k)
            obs["images"] = {c: rng.integers(0, 256, (*camera, 3), dtype=np.uint8) for c in obs["images"]}
        expected, got = cpu.step(obs).actions, gpu.step(obs).actions
        np.testing.assert_allclose(got, expected, atol=2e-3)  # this step's frame reached the GPU, not a stale one
        assert last is None or np.abs(got - last).max() > 1e-3  # and the frames matter
        last = got
        buffers = gpu.step_backend.upload._buffers  # the eager step's, or the captured step's
        assert sorted(buffers) == ["image/front", "image/wrist", "proprio"]
        assert all(t.is_pinned() for t in buffers.values())
        now = {name: t.data_ptr() for name, t in buffers.items()}
        assert pointers in (None, now)  # made once, reused
        pointers = now


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_area_resize_gives_opencvs_pixels():
    rng = np.random.default_rng(0)
    for source, size in [((480, 640), (128, 128)), ((720, 1280), (224, 224)), ((100, 90), (128, 128))]:
        frame = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
        chw = torch.from_numpy(frame).permute(2, 0, 1)[None].cuda()  # channels last in memory, as uploaded
        got = AreaResize(size)(chw)[0].permute(1, 2, 0).cpu().numpy()
        expected = resize_rgb(frame, size)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        difference = np.abs(got.astype(int) - expected)
        exact = (difference == 0).mean()
        assert difference.max() <= 1 and exact > 0.9, (source, difference.max(), exact)


def test_runtime_dtype_auto_is_bf16_only_for_the_torch_backend_on_cuda():
    from mambavla.runtime.policy_runtime import runtime_dtype

    assert runtime_dtype("auto", "cpu") == torch.float32
    assert runtime_dtype("auto", "cuda") == runtime_dtype("auto", "cuda:1") == torch.bfloat16
    assert runtime_dtype("auto", "cuda", backend="onnx") is None  # the given graph's own; an exported one is fp32
    assert runtime_dtype("bf16", "cpu") == torch.bfloat16 and runtime_dtype("fp32", "cuda") == torch.float32
    assert runtime_dtype("fp16", "cuda", backend="onnx") == torch.float16  # the ONNX graph's reduced precision
    with pytest.raises(ValueError, match="not a precision of the torch backend"):
        runtime_dtype("fp16", "cuda")
    with pytest.raises(ValueError, match="not a precision of the onnx backend"):
        runtime_dtype("bf16", "cuda", backend="onnx")
    with pytest.raises(ValueError, match="dtype must be one of"):
        runtime_dtype("fp8", "cuda")
