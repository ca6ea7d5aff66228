"""PolicyRuntime: observations in, action chunks out, with the recurrent state kept between steps.

This is the one object the ROS nodes and the CLI use to run a policy; it owns the input checks, what happens
once per instruction (its prefix state and task vector), the noise sequence and timing, and hands each step
to the step backend it chose when it was built (runtime/backends: eager torch, a captured CUDA graph, or ONNX
Runtime).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from mambavla.model.checkpoint import load_checkpoint
from mambavla.model.config import check_noise_scale, preset
from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.runtime.backends import KV_CAPACITY_FRAMES, StepBackend, check_precision, open_backend
from mambavla.runtime.backends.cuda_graph import GraphStep, StepGraph, cuda_work
from mambavla.runtime.chunk import ActionChunk
from mambavla.runtime.inputs import check_observation
from mambavla.runtime.instruction_gate import GATE_FILE, InstructionGate, unit
from mambavla.runtime.policy_config import DTYPES
from mambavla.runtime.stream_batch import StreamBatch
from mambavla.runtime.upload import DeviceInputs

__all__ = ["DTYPES", "PolicyRuntime", "cuda_work", "runtime_dtype"]  # cuda_work: scripts/kernel_profile.py


class PolicyRuntime:
    """History: `stream` continues the recurrent state frame after frame (O(1) per step); `window`
    re-scans the last T frames from the instruction state each step, repeating the first frame until T
    have been seen (as training pads windows at an episode's start).

    The step runs on one backend, chosen here once (`open_backend`):

    `backend="torch"`: op by op (`EagerStep`), or, with `cuda_graph` on CUDA, the whole step (vision, state
    update, every flow step) captured as one CUDA graph and replayed (`GraphStep`). The Transformer's captured
    step gets a static KV cache of at least `kv_capacity_frames` frames after the instruction; a stream that
    outgrows it is an error until reset() or a new instruction. `cuda_graph` default: on for the Mamba fusion on
    CUDA; the Transformer's is opt-in (`cuda_graph=True`), because its fixed KV capacity caps the history a
    stream may hold, where the eager step's cache grows without limit.

    `compile_step` (opt-in, CUDA graph only): compile the step's parts (`COMPILED_REGIONS`: vision, the
    context scan, the flow steps' conditions, the velocity that every flow step calls) with `torch.compile`
    before the graph captures them, so the graph replays Inductor's fused kernels instead of one kernel per eager
    op. True means mode "default"; a string names the mode (`COMPILE_MODES`). The first step pays the compile;
    docs/runtime.md has the kernel counts and latencies.

    `backend="onnx"`: the step runs in ONNX Runtime from the graph `mambavla export --onnx` wrote
    (`onnx_path`; exported to a temporary folder when not given), on the CUDA execution provider for
    device 'cuda' where onnxruntime-gpu provides it, else on the CPU provider (`onnx_provider` says which).
    There ORT captures and replays the step in CUDA graphs (`OnnxStep`) unless `cuda_graph=False`.
    `onnx_cuda_options`: CUDA provider options over `OnnxStep`'s, e.g. {"use_tf32": "1"} for TF32 matmuls
    (faster, but the fp32 parity this backend promises, 1e-3, no longer holds). `threads`: the session's.
    `dtype=torch.float16` (backend 'onnx'): the graph in fp16, its scan and SSM state in fp32 (`export_step`).
    Torch keeps only the once-per-instruction work: the instruction prefix state and task vector (fp32,
    CPU), and the noise, drawn as the torch backend draws it on CPU. Stream-mode Mamba policies only."""

    def __init__(self, model: MambaVLA, device: str | torch.device = "cpu", seed: int = 0,
                 dtype: torch.dtype | None = None,
                 cuda_graph: bool | None = None, backend: str = "torch", onnx_path: str | Path | None = None,
                 threads: int | None = None, kv_capacity_frames: int = KV_CAPACITY_FRAMES,
                 noise_scale: float | None = None, compile_step: bool | str = False,
                 onnx_cuda_options: dict | None = None, instruction_gate: InstructionGate | None = None,
                 snap_instructions: bool = True):
        self.step_backend: StepBackend = open_backend(
            model, device, backend, dtype=dtype, cuda_graph=cuda_graph, compile_step=compile_step,
            kv_capacity_frames=kv_capacity_frames, onnx_path=onnx_path, threads=threads,
            onnx_cuda_options=onnx_cuda_options)
        self.backend = backend
        self.device, self.dtype = self.step_backend.device, self.step_backend.dtype  # torch's part of the step
        self.model = model.to(self.device, self.dtype).eval()
        self.config = model.config
        self.seed = seed
        self.noise_scale = self.config.noise_scale if noise_scale is None else check_noise_scale(noise_scale)
        self._generator = torch.Generator(device=self.device)
        self._instruction: str | None = None
        self._prefix_state: list | None = None
        self._task: torch.Tensor | None = None  # (1, d) task vector of the instruction
        self.instruction_gate = instruction_gate  # refuses instructions the policy was not trained to follow
        # conditions the policy on the gate's nearest training instruction naming the same colours and sides
        self.snap_instructions = snap_instructions and instruction_gate is not None
        self.conditioned_on: str | None = None  # the instruction the policy is conditioned on (snapped or as given)
        self._trained_tasks: torch.Tensor | None = None  # the gate's training instructions' unit task vectors
        if instruction_gate is not None:  # here, while a node is still loading, not at the first instruction
            with torch.no_grad():
                tokens, mask = self.model.encode_instruction(list(instruction_gate.texts))
                self._trained_tasks = unit(self.model.task_vector(tokens, mask))
        self._inputs = DeviceInputs(self.device, self.config.image_size)  # extend_history's upload
        self.frames_seen = 0
        self.reset()

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", seed: int = 0, dtype: torch.dtype | None = None,
                        cuda_graph: bool | None = None, compile_step: bool | str = False, **backend) -> PolicyRuntime:
        """`backend`: backend, onnx_path, threads, onnx_cuda_options, snap_instructions (see the class)."""
        return cls(load_checkpoint(path), device=device, seed=seed, dtype=dtype, cuda_graph=cuda_graph,
                   compile_step=compile_step, instruction_gate=InstructionGate.load(path), **backend)

    @classmethod
    def from_preset(cls, name: str, device: str = "cpu", seed: int = 0, dtype: torch.dtype | None = None,
                    cuda_graph: bool | None = None, backend: str = "torch", onnx_path: str | Path | None = None,
                    threads: int | None = None, kv_capacity_frames: int = KV_CAPACITY_FRAMES,
                    noise_scale: float | None = None, compile_step: bool | str = False,
                    onnx_cuda_options: dict | None = None, **overrides) -> PolicyRuntime:
        torch.manual_seed(seed)  # untrained weights are reproducible from the seed
        config = preset(name).replace(**overrides) if overrides else preset(name)
        return cls(MambaVLA(config), device=device, seed=seed, dtype=dtype, cuda_graph=cuda_graph, backend=backend,
                   onnx_path=onnx_path, threads=threads, kv_capacity_frames=kv_capacity_frames, noise_scale=noise_scale,
                   compile_step=compile_step, onnx_cuda_options=onnx_cuda_options)

    # ---- what callers need to know --------------------------------------------------------------

    @property
    def camera_names(self) -> tuple[str, ...]:
        return self.config.cameras

    @property
    def image_size(self) -> tuple[int, int]:
        return self.config.image_size

    @property
    def proprio_dim(self) -> int:
        return self.config.proprio_dim

    @property
    def action_names(self) -> tuple[str, ...]:
        return self.config.action_names

    @property
    def action_mode(self) -> str:
        return self.config.action_mode

    @property
    def dt(self) -> float:
        return self.config.dt

    @property
    def policy_period(self) -> float:
        """Seconds of observation time between steps that the policy was trained for."""
        return self.config.policy_period

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @property
    def instruction(self) -> str | None:
        return self._instruction

    @property
    def resizes_on_device(self) -> bool:
        """Whether `step` resizes colour frames of another size on the GPU (`AreaResize`): the torch backend on
        CUDA, colour-only policies. Elsewhere OpenCV resizes them on the host, the same INTER_AREA either way."""
        return self.step_backend.resizes_on_device

    @property
    def cuda_graph(self) -> bool:
        """Whether torch replays the whole step as one captured CUDA graph (backend 'torch')."""
        return self.step_backend.cuda_graph

    @property
    def compile_mode(self) -> str | None:
        """torch.compile's mode for the captured step's parts (`compile_step`), else None."""
        return self.step_backend.compile_mode

    @property
    def onnx_provider(self) -> str | None:
        """The ONNX Runtime execution provider the step runs on (backend 'onnx'), else None."""
        return self.step_backend.onnx_provider

    @property
    def onnx_dtype(self) -> str | None:
        """The ONNX graph's dtype, "float32" or "float16" (backend 'onnx'), else None."""
        return self.step_backend.onnx_dtype

    @property
    def precision(self) -> str:
        """What the step computes in: the ONNX graph's dtype (backend 'onnx'), else torch's ("float32", "bfloat16")."""
        return self.step_backend.precision

    @property
    def onnx_cuda_graph(self) -> bool:
        """Whether ONNX Runtime replays the step as CUDA graphs (backend 'onnx', cuda_graph=True)."""
        return self.step_backend.onnx_cuda_graph

    @property
    def _graph(self) -> StepGraph | None:
        """The captured step (`StepGraph`) once the CUDA-graph backend has captured it, else None: what
        `mambavla bench` and scripts/kernel_profile.py profile."""
        return self.step_backend.graph if isinstance(self.step_backend, GraphStep) else None

    # ---- verbs ---------------------------------------------------------------------------------

    def stream_batch(self, streams: int, seeds: list[int] | None = None) -> StreamBatch:
        """A `StreamBatch` of `streams` independent streams of this policy, on this runtime's backend and
        device, stepped together by `step_batch`; stream i's noise is seeded `seeds[i]` (default seed + i)."""
        return StreamBatch(self, streams, seeds)

    def draw_noise(self, generator: torch.Generator) -> torch.Tensor:
        """One chunk's starting noise (1, H, A) from `generator`, N(0, noise_scale^2), on the torch device (CPU for
        'onnx')."""
        noise = torch.randn((1, self.config.chunk_size, self.config.action_dim), generator=generator,
                            device=self.device, dtype=self.dtype)
        return noise if self.noise_scale == 1.0 else noise * self.noise_scale

    def reset(self) -> None:
        """Forget the observation history (keeps the instruction); restart the noise sequence."""
        self._generator.manual_seed(self.seed)
        if self._prefix_state is not None:
            self.step_backend.start(self._prefix_state, self._task)
        self.frames_seen = 0

    @torch.no_grad()
    def set_instruction(self, text: str) -> None:
        text, self.conditioned_on, self._prefix_state, self._task = self.prepare_instruction(text)
        self._instruction = text
        self.reset()

    @torch.no_grad()
    def instruction_score(self, text: str) -> tuple[float, str]:
        """(similarity, text) of the checkpoint's training instruction nearest to `text`, as its gate sees it."""
        if self.instruction_gate is None:
            raise ValueError("this policy has no instruction gate (its checkpoint has no instructions.json)")
        tokens, mask = self.model.encode_instruction([" ".join(text.split())])
        return self.instruction_gate.nearest(unit(self.model.task_vector(tokens, mask)[0]), self._trained_tasks)

    @torch.no_grad()
    def prepare_instruction(self, text: str) -> tuple[str, str, list, torch.Tensor]:
        """(the text with its whitespace normalised, the instruction the policy is conditioned on: the text, or with
        `snap_instructions` the gate's snap of it; the prefix state and task vector (1, d) of that); a ValueError for
        an empty instruction or one the checkpoint's gate refuses, before anything is changed."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("instruction: expected a non-empty string")
        text = " ".join(text.split())
        tokens, mask = self.model.encode_instruction([text])
        task = self.model.task_vector(tokens, mask)
        if self.instruction_gate is not None:
            reason = self.instruction_gate.refusal(text, unit(task[0]), self._trained_tasks)
            if reason:
                raise ValueError(f"instruction {text[:120]!r}: {reason} (the checkpoint's "
                                 f"{GATE_FILE} decides; its min_similarity sets the threshold)")
        conditioned = text
        if self.snap_instructions:
            snapped = self.instruction_gate.snap(text, unit(task[0]), self._trained_tasks)
            if snapped is not None and snapped[1] != text:
                conditioned = snapped[1]
                tokens, mask = self.model.encode_instruction([conditioned])
                task = self.model.task_vector(tokens, mask)
        return text, conditioned, self.model.condition(tokens), task  # the prefix is scanned once per instruction

    @torch.no_grad()
    def step(self, observation: dict) -> ActionChunk:
        """observation: {"images": {camera: uint8 [H, W, 3]}, "proprio": float32 [P], "stamp": s (optional),
        "depth": {camera: uint16 [H, W] mm or float [H, W] m, the colour frame's size} (depth checkpoints only)}
        -> ActionChunk.

        Frames of any size are resized to the policy's `image_size` (h, w) with OpenCV's INTER_AREA, as the
        training frames were: on the GPU where `resizes_on_device`, else on the host. Depth is resized on the host,
        nearest neighbour (`data.images.resize_depth`).

        `timing_ms["total"]` is the whole call as the caller sees it: input checks, the upload, the step and
        the copy of the actions back to the host; `timing_ms["input"]` the checks alone."""
        if self._prefix_state is None:
            raise ValueError("instruction: no instruction set; call set_instruction() before step()")
        t0 = time.perf_counter()
        images, proprio, stamp = check_observation(self.config, observation, keep_size=self.resizes_on_device)
        timing = {"input": (time.perf_counter() - t0) * 1e3}
        noise = self.draw_noise(self._generator)
        actions = self.step_backend.step(images, proprio, noise, timing)[0]
        self.frames_seen += 1
        timing["total"] = (time.perf_counter() - t0) * 1e3
        return ActionChunk(actions=actions, dt=self.config.dt, stamp=stamp, action_names=self.config.action_names,
                           action_mode=self.config.action_mode, timing_ms=timing)

    @torch.no_grad()
    def extend_history(self, observation: dict, frames: int, block: int = 16) -> None:
        """Stream `frames` copies of `observation` into the history without sampling actions: puts the
        policy at a given history length (benchmarks, warm starts). Stream mode only."""
        if self.config.history_mode != "stream":
            raise ValueError("extend_history: only for history_mode 'stream'")
        if self._prefix_state is None:
            raise ValueError("instruction: no instruction set; call set_instruction() first")
        checked = check_observation(self.config, observation, keep_size=self.resizes_on_device)
        tokens = self.model.encode_frame(*self._inputs(*checked[:2]), self._task)  # (1, tokens_per_frame, d)
        state = self.step_backend.state()
        for start in range(0, frames, block):
            n = min(block, frames - start)
            state = self.model.condition(tokens.repeat(1, n, 1), state)
        self.step_backend.start(state, self._task)
        self.frames_seen += frames


def runtime_dtype(name: str, device: str, backend: str = "torch") -> torch.dtype | None:
    """A dtype by name (`DTYPES`) for a runtime on `device` and `backend`: "auto" is bf16 for the torch backend
    on CUDA (how the policies train, under autocast), fp32 for torch elsewhere, and None for the onnx backend
    (the dtype of the graph given, fp32 for one it exports). bf16 is the torch backend's reduced precision,
    fp16 the ONNX graph's (`PRECISIONS`)."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    if name == "auto":
        if backend == "onnx":
            return None
        name = "bf16" if torch.device(device).type == "cuda" else "fp32"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    check_precision(backend, dtype, name)
    return dtype
