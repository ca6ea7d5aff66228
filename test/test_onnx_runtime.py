"""ONNX export of the streaming step and PolicyRuntime(backend="onnx"): parity with the torch runtime."""

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from observations import random_observation  # noqa: E402

from mambavla.cli import main  # noqa: E402
from mambavla.runtime import PolicyRuntime  # noqa: E402
from mambavla.runtime.onnx_graph import export_step, input_names, output_names  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch_runtime = PolicyRuntime.from_preset("tiny", seed=4)
    path = export_step(torch_runtime.model, tmp_path_factory.mktemp("onnx") / "step.onnx")
    return torch_runtime, path


def test_exported_graph_takes_and_returns_the_recurrent_state(exported):
    runtime, path = exported
    graph = onnx.load(str(path))
    config = runtime.config
    assert [i.name for i in graph.graph.input] == input_names(config)
    assert [o.name for o in graph.graph.output] == output_names(config)
    layers = range(config.n_layers)
    assert input_names(config)[-2 * config.n_layers:] == [f"{k}_{i}" for i in layers for k in ("conv", "ssm")]
    assert {"task", "noise"} <= set(input_names(config))  # instruction and flow noise come in from outside
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in graph.graph.input)
    assert json.loads({p.key: p.value for p in graph.metadata_props}["config"])["name"] == "tiny"


def test_onnx_runtime_fuses_every_rms_norm_and_the_scan_has_no_copies_per_head(exported, tmp_path):
    # what ORT's optimiser makes of the step (the CPU provider's fusions without its CPU-only layouts; the CUDA
    # provider fuses the same patterns): each unfused pattern is several kernels per layer and flow step
    import onnxruntime as ort

    from mambavla.model.mamba2 import RMSNorm

    runtime, path = exported
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.add_free_dimension_override_by_name("batch", 1)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    nodes = onnx.load(options.optimized_model_filepath).graph.node
    ops = [node.op_type for node in nodes]
    in_mixers = [node.op_type for node in nodes if "/mixer" in node.name]
    norms = sum(isinstance(m, RMSNorm) for m in runtime.model.modules())
    flow_steps, layers = runtime.config.flow_steps, runtime.config.n_layers
    # each norm once per pass through its layer: the frame's scan and every flow step's, norms outside layers once
    assert ops.count("SimplifiedLayerNormalization") >= norms > 0
    assert "ReduceMean" not in ops and "Sqrt" not in ops  # no RMSNorm left unfused
    assert in_mixers.count("Softplus") == layers * (1 + flow_steps)  # every Mamba layer's pass is in view
    assert "Pad" not in in_mixers  # a step's scans are one chunk of their own length: nothing to pad
    assert "Tile" not in in_mixers  # one group of B and C: broadcast over the heads, not copied per head


def _streamed_diffs(reference, runtime) -> list[float]:
    """24 steps through both runtimes, with a new instruction at step 10 and a reset at 17 -> max |diff| per step."""
    for rt in (reference, runtime):
        rt.set_instruction("lift the red cube")
    diffs, chunks = [], []
    for k in range(24):
        if k == 10:  # a new instruction: new prefix state and task vector enter the graph
            for rt in (reference, runtime):
                rt.set_instruction("push the blue cube to the left")
        if k == 17:
            for rt in (reference, runtime):
                rt.reset()
        a, b = reference.step(random_observation(reference, k)), runtime.step(random_observation(runtime, k))
        diffs.append(float(np.abs(a.actions - b.actions).max()))
        chunks.append(a.actions)
        assert b.stamp == float(k) and b.actions.shape == (runtime.chunk_size, len(runtime.action_names))
    assert np.abs(chunks[5] - chunks[6]).max() > 1e-2  # the compared chunks do change from step to step
    assert runtime.frames_seen == reference.frames_seen == 7
    return diffs


def test_onnx_backend_matches_torch_runtime_over_streamed_steps(exported):
    reference, path = exported
    runtime = PolicyRuntime(reference.model, seed=4, backend="onnx", onnx_path=path)
    assert runtime.onnx_provider == "CPUExecutionProvider" and not runtime.onnx_cuda_graph
    diffs = _streamed_diffs(reference, runtime)
    assert max(diffs) <= 1e-3, diffs
    # a chunk the caller keeps (replay keeps every one) is its own: the next step does not rewrite it
    first = runtime.step(random_observation(runtime, 30))
    kept = first.actions.copy()
    second = runtime.step(random_observation(runtime, 31))
    assert not np.shares_memory(first.actions, second.actions)
    assert np.array_equal(first.actions, kept) and np.abs(second.actions - kept).max() > 1e-3
    with pytest.raises(ValueError, match="CUDA execution provider"):  # ORT's graphs need its CUDA provider
        PolicyRuntime(reference.model, backend="onnx", onnx_path=path, cuda_graph=True)
    # so do CUDA provider options (TF32): refused where they would be dropped, not ignored
    with pytest.raises(ValueError,
                       match=r"cuda_options \{'use_tf32': '1'\} needs ONNX Runtime's CUDA execution provider"):
        PolicyRuntime(reference.model, backend="onnx", onnx_path=path, onnx_cuda_options={"use_tf32": "1"})
    with pytest.raises(ValueError, match="need backend 'onnx'"):
        PolicyRuntime(reference.model, onnx_cuda_options={"use_tf32": "1"})


@pytest.fixture(scope="module")
def exported_fp16(exported, tmp_path_factory):
    import torch

    reference, _ = exported
    return export_step(reference.model, tmp_path_factory.mktemp("onnx16") / "step.onnx", torch.float16)


def _elem_types(graph) -> dict[str, int]:
    """Every value's element type in `graph` after ONNX shape inference (initializers included)."""
    inferred = onnx.shape_inference.infer_shapes(graph)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {**{v.name: v.type.tensor_type.elem_type for v in values},
            **{t.name: t.data_type for t in graph.graph.initializer}}


def test_fp16_graph_computes_in_fp16_but_keeps_the_scan_and_ssm_state_fp32(exported, exported_fp16):
    F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    reference, _ = exported
    graph = onnx.load(str(exported_fp16))
    assert {p.key: p.value for p in graph.metadata_props}["dtype"] == "float16"
    inputs = {i.name: i.type.tensor_type.elem_type for i in graph.graph.input}
    outputs = {o.name: o.type.tensor_type.elem_type for o in graph.graph.output}
    n = reference.config.n_layers
    assert all(inputs[f"conv_{i}"] == outputs[f"conv_{i}_next"] == F16 for i in range(n))
    assert all(inputs[f"ssm_{i}"] == outputs[f"ssm_{i}_next"] == F32 for i in range(n))  # the SSM state stays fp32
    assert outputs["actions"] == F32 and {inputs[k] for k in inputs if not k.startswith("conv_")} == {F32}
    types = _elem_types(graph)
    matmuls = [node for node in graph.graph.node if node.op_type in ("MatMul", "Gemm", "Conv")]
    weights = [types[node.input[1]] for node in matmuls]
    # the projections compute in fp16; the scan's own contractions (its MatMuls on activations) in fp32
    assert weights.count(F16) >= 3 * n and set(weights) == {F16, F32}
    scan = [node for node in graph.graph.node if node.op_type in ("Exp", "CumSum", "Softplus")]
    assert len(scan) >= 3 * n and all(types[node.output[0]] == F32 for node in scan)  # decays and dt in fp32


def test_onnx_fp16_backend_streams_close_to_torch_fp32(exported, exported_fp16):
    import torch

    reference, fp32_path = exported
    runtime = PolicyRuntime(reference.model, seed=4, backend="onnx", onnx_path=exported_fp16)
    assert runtime.onnx_dtype == "float16" and runtime.dtype == torch.float32  # torch's part stays fp32
    diffs = _streamed_diffs(reference, runtime)
    # fp16 rounding, not a different computation: far above the fp32 graph's ~1e-6, far below the chunks' change
    assert 1e-5 < max(diffs) <= 1e-2, diffs
    batch = runtime.stream_batch(2)  # the batch session takes the fp16 state too
    batch.set_instruction(0, "lift the red cube")
    batch.set_instruction(1, "push the blue cube to the left")
    chunks = batch.step_batch([random_observation(runtime, 0), random_observation(runtime, 1)])
    assert all(np.isfinite(c.actions).all() for c in chunks)
    with pytest.raises(ValueError, match="is a float32 graph, but dtype torch.float16 was asked for"):
        PolicyRuntime(reference.model, backend="onnx", onnx_path=fp32_path, dtype=torch.float16)
    assert PolicyRuntime(reference.model, backend="onnx", onnx_path=exported_fp16, dtype=None).onnx_dtype == "float16"
    with pytest.raises(ValueError, match="float32 or float16 graph"):
        PolicyRuntime(reference.model, backend="onnx", onnx_path=fp32_path, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="the torch backend runs float32 or bfloat16"):
        PolicyRuntime(reference.model, dtype=torch.float16)


def test_a_graph_the_runtime_exported_itself_goes_when_its_session_does(exported):
    import gc

    reference, _ = exported
    runtime = PolicyRuntime(reference.model, backend="onnx")  # no onnx_path: exported to a folder of its own
    folder = runtime.step_backend.onnx_step.path.parent
    assert folder.name.startswith("mambavla-onnx-") and (folder / "step.onnx").is_file()
    del runtime
    gc.collect()
    assert not folder.exists()
    before = set(folder.parent.glob("mambavla-onnx-*"))
    with pytest.raises(ValueError, match="CUDA execution provider"):  # a failed session leaves nothing either
        PolicyRuntime(reference.model, backend="onnx", onnx_cuda_options={"use_tf32": "1"})
    assert set(folder.parent.glob("mambavla-onnx-*")) == before


def test_cuda_provider_runs_on_the_gpu_named_in_fp32_unless_told_otherwise():
    from mambavla.runtime.backends.onnx import cuda_provider_options, providers

    assert cuda_provider_options("cuda") == {"use_tf32": "0", "device_id": "0"}  # fp32 graph, fp32 math (parity)
    assert cuda_provider_options("cuda:1", cuda_graph=True) == {"use_tf32": "0", "device_id": "1",
                                                                "enable_cuda_graph": "1"}
    assert cuda_provider_options("cuda:2", cuda_options={"use_tf32": "1"})["use_tf32"] == "1"
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        assert providers("cuda:1") == providers("cpu") == ["CPUExecutionProvider"]


@pytest.mark.cuda
@pytest.mark.parametrize("graphs", [False, True], ids=["cuda_provider", "cuda_graphs"])
def test_onnx_cuda_provider_matches_torch_runtime_over_streamed_steps(exported, graphs):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (ONNX Runtime's CUDA execution provider)")
    reference, path = exported
    runtime = PolicyRuntime(reference.model, device="cuda", seed=4, backend="onnx", onnx_path=path, cuda_graph=graphs)
    assert runtime.onnx_provider == "CUDAExecutionProvider" and runtime.onnx_cuda_graph == graphs
    diffs = _streamed_diffs(reference, runtime)  # with graphs: ORT captures each direction on its third step
    assert max(diffs) <= 1e-3, diffs


@pytest.mark.cuda
def test_onnx_fp16_graph_on_cuda_graphs_streams_close_to_torch_fp32(exported, exported_fp16):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (ONNX Runtime's CUDA execution provider)")
    reference, _ = exported
    runtime = PolicyRuntime(reference.model, device="cuda", seed=4, backend="onnx", onnx_path=exported_fp16)
    assert runtime.onnx_provider == "CUDAExecutionProvider" and runtime.onnx_cuda_graph
    assert runtime.onnx_dtype == "float16"
    diffs = _streamed_diffs(reference, runtime)
    assert 1e-5 < max(diffs) <= 1e-2, diffs


@pytest.mark.cuda
def test_onnx_cuda_options_reach_the_cuda_provider(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (ONNX Runtime's CUDA execution provider)")
    reference, path = exported
    options, batched = {}, {}
    for tf32 in (None, {"use_tf32": "1"}):
        runtime = PolicyRuntime(reference.model, device="cuda", backend="onnx", onnx_path=path, onnx_cuda_options=tf32)
        session = runtime.step_backend.onnx_step.session
        options[bool(tf32)] = session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"]
        session = runtime.stream_batch(2).step_backend.onnx_step.session  # the batch's own session takes them too
        batched[bool(tf32)] = session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"]
    assert options == batched == {False: "0", True: "1"}


def test_onnx_graph_of_another_policy_is_refused(exported):
    _, path = exported
    other = PolicyRuntime.from_preset("tiny", seed=4, chunk_size=5).model
    with pytest.raises(ValueError, match="different policy config"):
        PolicyRuntime(other, backend="onnx", onnx_path=path)
    with pytest.raises(ValueError, match="fusion 'mamba' and history_mode 'stream'"):
        PolicyRuntime.from_preset("tiny", backend="onnx", history_mode="window")


@pytest.mark.parametrize(("dtype", "tolerance"), [("fp32", 1e-3), ("fp16", 1e-2)])
def test_export_command_writes_the_graph_and_reports_parity(tmp_path, capsys, dtype, tolerance):
    out = tmp_path / "tiny.onnx"
    assert main(["export", "--onnx", str(out), "--preset", "tiny", "--dtype", dtype, "--check-steps", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["bytes"] == out.stat().st_size and report["dtype"] == dtype
    assert report["parity"]["steps"] == 20 and report["parity"]["max_abs_diff"] <= tolerance
    assert report["parity"]["graph_dtype"] == {"fp32": "float32", "fp16": "float16"}[dtype]
    if dtype != "fp32":  # the graph's dtype, refused where it would be dropped
        assert main(["export", "--bf16", str(tmp_path / "ckpt"), "--dtype", dtype]) == 2
        assert "--dtype is the ONNX graph's" in capsys.readouterr().err
