"""StreamBatch.step_batch: B streams stepped together == B runtimes stepped one by one."""

import numpy as np
import pytest
import torch
from observations import random_observation

from mambavla.runtime import PolicyRuntime

INSTRUCTIONS = ("lift the red cube", "push the blue cube to the left", "place the green cube on the red plate")


@pytest.fixture(scope="module")
def base():
    return PolicyRuntime.from_preset("tiny", seed=20)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_streams_match_separate_runtimes_with_their_own_instruction_and_resets(base, backend):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    runtime = base if backend == "torch" else PolicyRuntime(base.model, seed=20, backend="onnx")
    batch = runtime.stream_batch(3)
    singles = [PolicyRuntime(base.model, seed=20 + i) for i in range(3)]
    for i, text in enumerate(INSTRUCTIONS):
        batch.set_instruction(i, text)
        singles[i].set_instruction(text)
    worst = 0.0
    for k in range(12):
        if k == 5:  # reset one stream: the others keep their history
            batch.reset(1)
            singles[1].reset()
        if k == 8:  # a new instruction for one stream
            batch.set_instruction(2, "lift the blue cube")
            singles[2].set_instruction("lift the blue cube")
        chunks = batch.step_batch([random_observation(base, 100 * i + k) for i in range(3)])
        for i, chunk in enumerate(chunks):
            expected = singles[i].step(random_observation(base, 100 * i + k))
            worst = max(worst, float(np.abs(chunk.actions - expected.actions).max()))
            assert chunk.stamp == expected.stamp
    assert worst <= 1e-4
    assert batch.frames_seen == [12, 7, 4] == [s.frames_seen for s in singles]
    # state() is a copy: two more steps (ONNX Runtime writes each of its two state buffers once) leave it as it was
    kept = [t for s in batch.state(0) for t in s]
    before = [t.clone() for t in kept]
    for k in (12, 13):
        batch.step_batch([random_observation(base, 100 * i + k) for i in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(kept, before))
    assert not all(torch.equal(a, b) for a, b in zip((t for s in batch.state(0) for t in s), before))


def test_streams_differ_when_only_their_instruction_differs(base):
    batch = base.stream_batch(2, seeds=[3, 3])
    batch.set_instruction(0, INSTRUCTIONS[0])
    batch.set_instruction(1, INSTRUCTIONS[1])
    same = random_observation(base, 0)
    a, b = batch.step_batch([same, same])
    assert np.abs(a.actions - b.actions).max() > 1e-3


def test_step_batch_refuses_wrong_counts_and_streams_without_instruction(base):
    batch = base.stream_batch(2)
    batch.set_instruction(0, INSTRUCTIONS[0])
    with pytest.raises(ValueError, match=r"no instruction set for stream\(s\) \[1\]"):
        batch.step_batch([random_observation(base, 0), random_observation(base, 1)])
    batch.set_instruction(1, INSTRUCTIONS[1])
    with pytest.raises(ValueError, match="expected 2 observations"):
        batch.step_batch([random_observation(base, 0)])
    with pytest.raises(ValueError, match="out of range"):
        batch.reset(2)
    with pytest.raises(ValueError, match="stream-mode policy"):
        PolicyRuntime.from_preset("tiny", history_mode="window").stream_batch(2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the GPU machine)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_batch_matches_separate_cuda_graph_runtimes(dtype):
    base = PolicyRuntime.from_preset("tiny", device="cuda", seed=20, dtype=dtype)
    batch = base.stream_batch(3)
    singles = [PolicyRuntime(base.model, device="cuda", seed=20 + i, dtype=dtype) for i in range(3)]
    for i, text in enumerate(INSTRUCTIONS):
        batch.set_instruction(i, text)
        singles[i].set_instruction(text)
    worst = 0.0
    for k in range(20):
        if k == 5:
            batch.reset(1)
            singles[1].reset()
        chunks = batch.step_batch([random_observation(base, 100 * i + k) for i in range(3)])
        for i, chunk in enumerate(chunks):
            expected = singles[i].step(random_observation(base, 100 * i + k)).actions
            worst = max(worst, float(np.abs(chunk.actions - expected).max()))
    assert batch.step_backend.graph is not None
    assert worst <= (1e-4 if dtype == torch.float32 else 2e-2)
