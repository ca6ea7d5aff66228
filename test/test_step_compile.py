"""compile_step: the CUDA-graph step with a torch.compile'd body gives the chunks of the plain one."""

import numpy as np
import pytest
import torch
from observations import instruction_change_chunks

from mambavla.runtime import PolicyRuntime


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
@pytest.mark.parametrize("history", [{"history_mode": "stream"}, {"history_mode": "window", "history_frames": 3},
                                     {"history_mode": "stream", "fusion": "transformer"}],
                         ids=["stream", "window", "transformer"])
def test_compiled_graph_step_matches_graph_step(history, dtype):
    chunks = {}
    for compile_step in (False, True):
        # the Transformer's captured step is opt-in (cuda_graph=True); its static KV caches cross compiled regions
        rt = PolicyRuntime.from_preset("tiny", device="cuda", seed=5, dtype=dtype, compile_step=compile_step,
                                       cuda_graph=True, **history)
        assert rt.cuda_graph and rt.compile_mode == ("default" if compile_step else None)
        chunks[compile_step] = instruction_change_chunks(rt)  # the graph's static state follows a new instruction
        assert rt.step_backend.graph.compile_mode == rt.compile_mode
    # fp32: as test_runtime's graph-vs-eager check. bf16: as test_step_batch's, plus a relative term, since
    # Inductor rounds a fused chain to bf16 once where eager rounds after every op, so differences grow with the
    # actions' size
    tolerance = {"atol": 1e-3} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for a, b in zip(chunks[False], chunks[True]):
        np.testing.assert_allclose(a, b, **tolerance)
