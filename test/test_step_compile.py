"""compile_step: the CUDA-graph step with a torch.compile'd body gives the chunks of the plain one."""

import numpy as np
import pytest
import torch

from mambavla.runtime import PolicyRuntime


def _obs(runtime: PolicyRuntime, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    h, w = runtime.image_size
    return {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in runtime.camera_names},
            "proprio": rng.normal(size=runtime.proprio_dim).astype(np.float32), "stamp": 0.0}


def test_compile_step_is_refused_off_the_cuda_graph():
    with pytest.raises(ValueError, match="compile_step compiles the captured CUDA-graph step: it needs .*device 'cpu'"):
        PolicyRuntime.from_preset("tiny", compile_step=True)
    with pytest.raises(ValueError, match="compile_step must be True, False or one of"):
        PolicyRuntime.from_preset("tiny", compile_step="reduce-overhead")  # would nest a graph in ours
    assert PolicyRuntime.from_preset("tiny", compile_step=False).compile_mode is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compile_step_is_refused_without_cuda_graph_on_cuda():
    with pytest.raises(ValueError, match="cuda_graph off"):
        PolicyRuntime.from_preset("tiny", device="cuda", cuda_graph=False, compile_step=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("history", [{"history_mode": "stream"}, {"history_mode": "window", "history_frames": 3}])
def test_compiled_graph_step_matches_graph_step(history, dtype):
    chunks = {}
    for compile_step in (False, True):
        rt = PolicyRuntime.from_preset("tiny", device="cuda", seed=5, dtype=dtype, compile_step=compile_step, **history)
        assert rt.cuda_graph and rt.compile_mode == ("default" if compile_step else None)
        rt.set_instruction("lift the red cube")
        chunks[compile_step] = [rt.step(_obs(rt, seed=k)).actions for k in range(4)]
        rt.reset()
        chunks[compile_step].append(rt.step(_obs(rt, seed=0)).actions)
        rt.set_instruction("push the blue cube to the left")  # the graph's static state follows a new instruction
        chunks[compile_step] += [rt.step(_obs(rt, seed=k)).actions for k in range(2)]
        assert rt._graph.compile_mode == rt.compile_mode
    # fp32: as test_runtime's graph-vs-eager check. bf16: as test_step_batch's, plus a relative term, since
    # Inductor rounds a fused chain to bf16 once where eager rounds after every op (measured on an H100,
    # 4 steps: max abs difference 0.011 for tiny, 0.019 for base, actions up to 1.6 and 2.3)
    tolerance = {"atol": 1e-3} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for a, b in zip(chunks[False], chunks[True]):
        np.testing.assert_allclose(a, b, **tolerance)
