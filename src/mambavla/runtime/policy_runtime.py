"""PolicyRuntime: observations in, action chunks out, with the recurrent state kept between steps.

This is the one object the ROS nodes and the CLI use to run a policy; it owns input validation,
the cached states (instruction prefix, streaming history or a window of frames) and timing.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

from mambavla.data.images import area_weights, check_image_size, resize_rgb
from mambavla.model.checkpoint import load_checkpoint
from mambavla.model.config import check_noise_scale, preset
from mambavla.model.fusion import KVCache, StaticKVCache
from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.runtime.chunk import ActionChunk

KV_CAPACITY_FRAMES = 256  # frames of history the Transformer's captured step holds by default (StaticKVCache)
# torch.compile modes for `compile_step`: none that captures CUDA graphs itself ("reduce-overhead",
# "max-autotune"), since our own graph captures the compiled kernels
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
# the model methods `compile_step` compiles, each once (static shapes; `velocity` serves every flow step,
# `flow_modulations` conditions them all at once). Compiling the whole step instead unrolls the fusion stack
# once per flow step, and its compile takes several times as long as the regions'
COMPILED_REGIONS = ("encode_frame", "condition", "flow_modulations", "velocity")


class PolicyRuntime:
    """History: `stream` continues the recurrent state frame after frame (O(1) per step); `window`
    re-scans the last T frames from the instruction state each step, repeating the first frame until T
    have been seen (as training pads windows at an episode's start).

    `cuda_graph`: on CUDA, capture the whole step (vision, state update, every flow step) as one CUDA
    graph and replay it. Possible because the step has static shapes: the Mamba state and the window have
    fixed sizes, and the Transformer gets a static KV cache (`StaticKVCache`) of at least
    `kv_capacity_frames` frames after the instruction (room is kept for the longest instruction, so a
    short one leaves space for a few frames more), attended in full every step; a stream that outgrows it
    is an error until reset() or a new instruction. Default: on for the Mamba fusion on CUDA; the Transformer's is
    opt-in (`cuda_graph=True`), because its fixed KV capacity caps the history a stream may hold, where the eager
    step's cache grows without limit.

    `compile_step` (opt-in, CUDA graph only): compile the step's parts (`COMPILED_REGIONS`: vision, the
    context scan, the flow steps' conditions, the velocity that every flow step calls) with `torch.compile`
    before the graph captures them, so the graph replays Inductor's fused kernels instead of one kernel per eager
    op. True means mode "default"; a string names the mode (`COMPILE_MODES`). The first step pays the compile
    (about a minute for the base preset); docs/runtime.md has the kernel counts and latencies.

    `backend="onnx"`: the step runs in ONNX Runtime from the graph `mambavla export --onnx` wrote
    (`onnx_path`; exported to a temporary folder when not given), on the CUDA execution provider for
    device 'cuda' where onnxruntime-gpu provides it, else on the CPU provider (`onnx_provider` says which).
    There ORT captures and replays the step in CUDA graphs (`OnnxStep`) unless `cuda_graph=False`.
    `onnx_cuda_options`: CUDA provider options over `OnnxStep`'s, e.g. {"use_tf32": "1"} for TF32 matmuls
    (faster, but the fp32 parity this backend promises, 1e-3, no longer holds).
    `dtype=torch.float16` (backend 'onnx'): the graph in fp16, its scan and SSM state in fp32 (`export_step`).
    Torch keeps only the once-per-instruction work: the instruction prefix state and task vector (fp32,
    CPU), and the noise, drawn as the torch backend draws it on CPU. Stream-mode Mamba policies only."""

    def __init__(self, model: MambaVLA, device: str | torch.device = "cpu", seed: int = 0,
                 dtype: torch.dtype | None = None,
                 cuda_graph: bool | None = None, backend: str = "torch", onnx_path: str | Path | None = None,
                 threads: int | None = None, kv_capacity_frames: int = KV_CAPACITY_FRAMES,
                 noise_scale: float | None = None, compile_step: bool | str = False,
                 onnx_cuda_options: dict | None = None):
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        if onnx_cuda_options and backend != "onnx":
            raise ValueError("onnx_cuda_options are ONNX Runtime's: they need backend 'onnx'")
        self.backend = backend
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available() and backend == "torch":
            raise ValueError("device 'cuda' requested but CUDA is not available")
        self._onnx = None
        if backend == "onnx":
            self._onnx = _onnx_session(model, onnx_path, str(self.device), threads, cuda_graph, onnx_cuda_options,
                                       dtype)
            self.device = torch.device("cpu")  # torch's part: instruction prefix, noise, input checks
            cuda_graph = False  # ORT's graphs are the session's (onnx_cuda_graph); torch captures nothing
            dtype = torch.float32  # of torch's part; the graph's is onnx_dtype
        elif dtype == torch.float16:
            raise ValueError("dtype float16 is the ONNX graph's (backend 'onnx'); the torch backend runs float32 or "
                             "bfloat16")
        self.dtype = dtype or torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        self.config = model.config
        self.seed = seed
        self.noise_scale = self.config.noise_scale if noise_scale is None else check_noise_scale(noise_scale)
        self._generator = torch.Generator(device=self.device)
        self._instruction: str | None = None
        self._prefix_state: list | None = None
        self._task: torch.Tensor | None = None  # (1, d) task vector of the instruction
        self._state: list | None = None  # context state after the last frame (stream mode)
        self._window: deque = deque(maxlen=self.config.history_frames)  # frame tokens (window mode)
        self.frames_seen = 0
        if kv_capacity_frames < 1:
            raise ValueError(f"kv_capacity_frames must be >= 1, got {kv_capacity_frames}")
        self.kv_capacity_frames = kv_capacity_frames
        graphable = self.device.type == "cuda"
        if cuda_graph and not graphable:
            raise ValueError("cuda_graph needs device 'cuda'")
        # the Transformer's captured step is opt-in: its StaticKVCache caps the history (see the class docstring)
        self.cuda_graph = (graphable and self.config.fusion == "mamba") if cuda_graph is None else cuda_graph
        self.compile_mode = _compile_mode(compile_step, self.cuda_graph and backend == "torch", self.device, backend)
        self._graph: _StepGraph | None = None
        self._upload: PinnedUpload | None = None  # eager CUDA steps' pinned input buffers, made on first use
        self._resize = AreaResize(self.config.image_size)
        self.reset()

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", seed: int = 0, dtype: torch.dtype | None = None,
                        cuda_graph: bool | None = None, compile_step: bool | str = False, **backend) -> PolicyRuntime:
        """`backend`: backend, onnx_path, threads, onnx_cuda_options (see the class)."""
        return cls(load_checkpoint(path), device=device, seed=seed, dtype=dtype, cuda_graph=cuda_graph,
                   compile_step=compile_step, **backend)

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
    def resizes_on_device(self) -> bool:
        """Whether `step` resizes colour frames of another size on the GPU (`AreaResize`): the torch backend on
        CUDA, colour-only policies. Elsewhere OpenCV resizes them on the host, the same INTER_AREA either way."""
        return self.device.type == "cuda" and self._onnx is None and not self.config.use_depth

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
    def onnx_provider(self) -> str | None:
        """The ONNX Runtime execution provider the step runs on (backend 'onnx'), else None."""
        return None if self._onnx is None else self._onnx.provider

    @property
    def onnx_dtype(self) -> str | None:
        """The ONNX graph's dtype, "float32" or "float16" (backend 'onnx'), else None."""
        return None if self._onnx is None else self._onnx.dtype

    @property
    def precision(self) -> str:
        """What the step computes in: the ONNX graph's dtype (backend 'onnx'), else torch's ("float32", "bfloat16")."""
        return self._onnx.dtype if self._onnx is not None else str(self.dtype).removeprefix("torch.")

    @property
    def onnx_cuda_graph(self) -> bool:
        """Whether ONNX Runtime replays the step as CUDA graphs (backend 'onnx', cuda_graph=True)."""
        return self._onnx is not None and self._onnx.cuda_graph

    # ---- verbs ---------------------------------------------------------------------------------

    def stream_batch(self, streams: int, seeds: list[int] | None = None):
        """A `StreamBatch` of `streams` independent streams of this policy, on this runtime's backend and
        device, stepped together by `step_batch`; stream i's noise is seeded `seeds[i]` (default seed + i)."""
        from mambavla.runtime.stream_batch import StreamBatch

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
        self._state = self._prefix_state
        self._window.clear()
        if self._onnx is not None and self._prefix_state is not None:
            self._onnx.restart([t.numpy() for s in self._prefix_state for t in s], self._task.numpy())
        if self._graph is not None and self._prefix_state is not None:
            self._graph.restart(self._prefix_state)
            self._graph.task.copy_(self._task)
            self._state = self._graph.state
        self.frames_seen = 0

    @torch.no_grad()
    def set_instruction(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("instruction: expected a non-empty string")
        text = " ".join(text.split())
        tokens, mask = self.model.encode_instruction([text])
        self._prefix_state = self.model.condition(tokens)  # level 1: scanned once per instruction
        self._task = self.model.task_vector(tokens, mask)
        self._instruction = text
        self.reset()

    @torch.no_grad()
    def step(self, observation: dict) -> ActionChunk:
        """observation: {"images": {camera: uint8 [H, W, 3]}, "proprio": float32 [P], "stamp": s (optional),
        "depth": {camera: float32 [h, w] metres} (depth checkpoints only)} -> ActionChunk.

        Frames of any size are resized to the policy's `image_size` (h, w) with OpenCV's INTER_AREA, as the
        training frames were: on the GPU where `resizes_on_device`, else on the host. Depth comes at (h, w).

        `timing_ms["total"]` is the whole call as the caller sees it: input checks, the upload, the step and
        the copy of the actions back to the host; `timing_ms["input"]` the checks alone."""
        if self._prefix_state is None:
            raise ValueError("instruction: no instruction set; call set_instruction() before step()")
        t0 = time.perf_counter()
        images, proprio, stamp = self._validate(observation, keep_size=self.resizes_on_device)
        timing = {"input": (time.perf_counter() - t0) * 1e3}
        if self._onnx is not None:
            noise = self.draw_noise(self._generator)
            actions = self._onnx.run({c: v.float().numpy() for c, v in images.items()}, proprio.numpy(),
                                     noise.numpy())[0]
        elif self.cuda_graph:
            actions = self._graph_step(images, proprio)
            timing["cuda_graph"] = 1.0
        else:
            actions = self._eager_step(images, proprio, timing)
        self.frames_seen += 1
        timing["total"] = (time.perf_counter() - t0) * 1e3
        return ActionChunk(actions=actions, dt=self.config.dt, stamp=stamp, action_names=self.config.action_names,
                           action_mode=self.config.action_mode, timing_ms=timing)

    def _eager_step(self, images: dict[str, torch.Tensor], proprio: torch.Tensor,
                    timing: dict[str, float]) -> np.ndarray:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        images, proprio = self._on_device(images, proprio)
        tokens = self.model.encode_frame(images, proprio, self._task)  # (1, tokens_per_frame, d)
        sync()
        t1 = time.perf_counter()
        if self.config.history_mode == "stream":  # level 2: continue from the cached state
            self._state = self.model.condition(tokens, self._state)
            context = self._state
        else:  # re-scan the last T frames from the instruction prefix state
            self._window.append(tokens)
            padding = [self._window[0]] * (self.config.history_frames - len(self._window))
            context = self.model.condition(torch.cat(padding + list(self._window), dim=1), self._prefix_state)
        sync()
        t2 = time.perf_counter()
        noise = self.draw_noise(self._generator)
        sampled = self.model.sample_actions(context, noise, task=self._task)  # level 3
        actions = self.model.normalizer.unnormalize_actions(sampled.float())
        actions = actions[0].cpu().numpy()
        t3 = time.perf_counter()
        timing.update(vision=(t1 - t0) * 1e3, fusion=(t2 - t1) * 1e3, flow=(t3 - t2) * 1e3)
        return actions

    def _graph_step(self, images: dict[str, torch.Tensor], proprio: torch.Tensor) -> np.ndarray:
        if self._graph is None:
            self._graph = _StepGraph(self.model, self._prefix_state, self._task, images, proprio, self.dtype,
                                     kv_capacity_frames=self.kv_capacity_frames, compile_mode=self.compile_mode)
            self._graph.restart(self._state if self.config.history_mode == "stream" else self._prefix_state)
            self._state = self._graph.state
        self._graph.load(images, proprio, self.draw_noise(self._generator))
        if self.config.history_mode == "window" and self.frames_seen == 0:
            self._graph.fill_window()
        return self._graph.replay()[0]

    def _on_device(self, images: dict[str, torch.Tensor],
                   proprio: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Checked host inputs -> tensors on the torch device at the policy's image size (the eager paths; the
        captured step uploads its own)."""
        if self.device.type != "cuda":
            return images, proprio
        if self._upload is None:
            self._upload = PinnedUpload(self.device)
        images, proprio = self._upload.to_device(images, proprio)
        return {c: self._resize(v) for c, v in images.items()}, proprio

    @torch.no_grad()
    def extend_history(self, observation: dict, frames: int, block: int = 16) -> None:
        """Stream `frames` copies of `observation` into the history without sampling actions: puts the
        policy at a given history length (benchmarks, warm starts). Stream mode only."""
        if self.config.history_mode != "stream":
            raise ValueError("extend_history: only for history_mode 'stream'")
        if self._prefix_state is None:
            raise ValueError("instruction: no instruction set; call set_instruction() first")
        images, proprio = self._on_device(*self._validate(observation, keep_size=self.resizes_on_device)[:2])
        tokens = self.model.encode_frame(images, proprio, self._task)
        state = self._state
        if self._onnx is not None:
            flat = [torch.from_numpy(t) for t in self._onnx.state()]
            state = [type(s)(*flat[2 * i:2 * i + 2]) for i, s in enumerate(self._prefix_state)]
        for start in range(0, frames, block):
            n = min(block, frames - start)
            state = self.model.condition(tokens.repeat(1, n, 1), state)
        if self._graph is not None:
            self._graph.restart(state)
        elif self._onnx is not None:
            self._onnx.restart([t.numpy() for s in state for t in s], self._task.numpy())
        else:
            self._state = state
        self.frames_seen += frames

    # ---- input checks ----------------------------------------------------------------------------

    def _validate(self, observation: dict,
                  keep_size: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor, float]:
        """-> host tensors: images {camera: (1, C, h, w)} (uint8 colour; float with depth), proprio (1, P) float32,
        stamp.
        A frame of another size is resized to (h, w) here (OpenCV), or kept at its size with `keep_size`
        (for `AreaResize` on the GPU). Images are views of the frames, channels last in memory."""
        if not isinstance(observation, dict):
            raise ValueError(f"observation: expected a dict with 'images' and 'proprio', got "
                             f"{type(observation).__name__}")
        images = observation.get("images")
        if not isinstance(images, dict):
            raise ValueError("images: expected a dict {camera_name: uint8 array [H, W, 3]}")
        expected = set(self.config.cameras)
        missing, unknown = expected - set(images), set(images) - expected
        if missing:
            raise ValueError(f"images: missing camera(s) {sorted(missing)}; this policy expects {sorted(expected)}")
        if unknown:
            raise ValueError(f"images: unknown camera(s) {sorted(unknown)}; this policy expects {sorted(expected)}")
        h, w = self.config.image_size
        tensors = {}
        for cam in self.config.cameras:
            img = images[cam]
            if not isinstance(img, np.ndarray):
                raise ValueError(f"images[{cam!r}]: expected a numpy array, got {type(img).__name__}")
            if img.dtype != np.uint8:
                raise ValueError(f"images[{cam!r}]: expected dtype uint8, got {img.dtype}")
            if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
                raise ValueError(f"images[{cam!r}]: expected shape (H, W, 3) RGB (the policy sees ({h}, {w}, 3)), "
                                 f"got {img.shape}")
            try:  # the limits camera messages have (data/images.py): a frame's cost is bounded before it is touched
                check_image_size(img.shape[1], img.shape[0], img.nbytes)
            except ValueError as err:
                raise ValueError(f"images[{cam!r}]: {err}") from None
            if img.shape[:2] != (h, w) and not keep_size:
                img = resize_rgb(img, (h, w))
            # uint8, a view (channels last in memory): converted and resized where the step runs
            chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
            if self.config.use_depth:
                chw = torch.cat([chw.float(), self._depth_channel(observation, cam, h, w)], dim=0)
            tensors[cam] = chw[None]

        proprio = observation.get("proprio")
        if proprio is None:
            raise ValueError(f"proprio: missing; expected float32 array [{self.config.proprio_dim}]")
        proprio = np.asarray(proprio)
        if proprio.shape != (self.config.proprio_dim,):
            raise ValueError(f"proprio: expected shape ({self.config.proprio_dim},), got {proprio.shape}")
        if not np.issubdtype(proprio.dtype, np.floating):
            raise ValueError(f"proprio: expected a float array, got dtype {proprio.dtype}")
        if not np.isfinite(proprio).all():
            raise ValueError(f"proprio: contains NaN or Inf: {proprio.tolist()}")
        stamp = observation.get("stamp", time.time())
        if not isinstance(stamp, (int, float)) or not np.isfinite(stamp):
            raise ValueError(f"stamp: expected finite seconds, got {stamp!r}")
        return tensors, torch.from_numpy(proprio.astype(np.float32))[None], float(stamp)

    def _depth_channel(self, observation: dict, cam: str, h: int, w: int) -> torch.Tensor:
        depth = (observation.get("depth") or {}).get(cam)
        if depth is None:
            raise ValueError(f"depth[{cam!r}]: this policy uses depth; expected float32 [{h}, {w}] metres")
        depth = np.asarray(depth)
        if depth.shape != (h, w) or not np.isfinite(depth).all():
            raise ValueError(f"depth[{cam!r}]: expected finite float [{h}, {w}], got shape {depth.shape}")
        # scaled so that depth_scale metres maps to 255, the range of the colour channels
        return torch.from_numpy(np.clip(depth / self.config.depth_scale, 0, 1).astype(np.float32) * 255.0)[None]


class _StepGraph:
    """One CUDA graph for a whole step. Inputs are copied into static buffers and the graph replayed;
    it updates its own static history in place: the recurrent state (stream mode) or the window of the
    last T-1 frames' tokens (window mode, re-scanned from the static instruction state).

    `compile_mode`: a torch.compile mode (`COMPILE_MODES`) for the body before capture, or None (eager ops)."""

    def __init__(self, model: MambaVLA, prefix_state: list, task: torch.Tensor, images: dict[str, torch.Tensor],
                 proprio: torch.Tensor,
                 dtype: torch.dtype, kv_capacity_frames: int = KV_CAPACITY_FRAMES, compile_mode: str | None = None):
        self.model = model
        # static shapes: one specialised compile per region; the warm-up below compiles (and autotunes)
        self.compile_mode = compile_mode
        self._compiled = {} if compile_mode is None else {
            name: torch.compile(getattr(model, name), mode=compile_mode, dynamic=False) for name in COMPILED_REGIONS}
        self.task = task.clone()  # static: the runtime copies a new instruction's task vector in
        self.stream = model.config.history_mode == "stream"
        device = task.device
        # static inputs shaped like the example inputs (host or device, frames at any size), on the device
        h, w = model.config.image_size
        self.images = {c: torch.zeros((*v.shape[:2], h, w), dtype=v.dtype, device=device) for c, v in images.items()}
        self.proprio = torch.zeros(proprio.shape, dtype=proprio.dtype, device=device)
        self._upload = PinnedUpload(device)
        self._resize = AreaResize(model.config.image_size)
        batch = proprio.shape[0]  # streams stepped together (StreamBatch), each row its own state
        self.noise = torch.zeros((batch, model.config.chunk_size, model.config.action_dim), device=device, dtype=dtype)
        n, d = model.config.tokens_per_frame, model.config.d_model
        self.capacity = None  # positions of the Transformer's static KV cache
        self.length = 0  # positions in use after the last step (host-side count: the graph never syncs)
        if model.config.fusion == "transformer":
            c = model.config
            self.capacity = c.max_instruction_tokens + kv_capacity_frames * n + c.chunk_size
            self.state = [StaticKVCache.empty_like(s, self.capacity) for s in prefix_state]
            self.restart(prefix_state)
        else:
            # stream: history; window: instruction
            self.state = [type(s)(*(t.clone() for t in s)) for s in prefix_state]
        self.window = torch.zeros(batch, (model.config.history_frames - 1) * n, d, device=device, dtype=dtype)
        saved = self._save()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: Triton (and torch.compile) compile/autotune, allocator settles
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self._load(saved)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.actions = self._step()
        if compile_mode is not None:
            _stop_compile_workers()

    def _save(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        return [t.clone() for s in self.state for t in s], self.window.clone()

    def _load(self, saved: tuple[list[torch.Tensor], torch.Tensor]) -> None:
        for dst, src in zip([t for s in self.state for t in s], saved[0]):
            dst.copy_(src)
        self.window.copy_(saved[1])

    def kernels_per_step(self) -> dict[str, int]:
        """GPU work the captured step holds, counted by torch.profiler (CUPTI) over one run of the body
        outside the graph (compiled or not, as captured), the static state restored afterwards:
        {"kernels": launches, "memcpy_memset": copies and fills, "graph_replay_kernels": kernel events
        CUPTI reports for one replay (0 where it reports none for graph nodes)}. Not for a hot loop."""
        def count(fn) -> tuple[int, int]:
            kernels, copies = cuda_work(fn)
            return len(kernels), len(copies)

        saved = self._save()
        kernels, copies = count(self._step)
        self._load(saved)
        replay, _ = count(self.graph.replay)
        self._load(saved)
        return {"kernels": kernels, "memcpy_memset": copies, "graph_replay_kernels": replay}

    def _step(self) -> torch.Tensor:
        """The body, with the compiled regions standing in for the model's methods while it runs (the
        model stays eager for every other caller; a replay runs no Python)."""
        for name, fn in self._compiled.items():
            setattr(self.model, name, fn)
        try:
            return self._body()
        finally:
            for name in self._compiled:
                delattr(self.model, name)

    def _body(self) -> torch.Tensor:
        tokens = self.model.encode_frame(self.images, self.proprio, self.task)
        scanned = tokens if self.stream else torch.cat([self.window, tokens], dim=1)
        context = self.model.condition(scanned, self.state)
        if self.capacity is not None:
            # the Transformer's caches, rebuilt here rather than taken from the compiled `condition`: torch
            # 2.11's dynamo fails to read that region's returned StaticKVCaches in `velocity` ("IndexError:
            # tuple index out of range"). `condition` wrote k, v and valid in place.
            context = [StaticKVCache(s.k, s.v, s.valid, s.length + scanned.shape[1]) for s in self.state]
        if self.stream:
            self._copy_state(self.state, context)
        else:
            self.window.copy_(scanned[:, tokens.shape[1]:])
        actions = self.model.sample_actions(context, self.noise, task=self.task)
        return self.model.normalizer.unnormalize_actions(actions.float())

    def restart(self, state: list) -> None:
        """Copy `state` into the static buffers. Stream mode: the history to continue from; window
        mode: the instruction's state. A Transformer's dynamic KV cache is loaded into the static one. Eager
        only (it reads the Transformer cache's length on the host)."""
        for dst, src in zip(self.state, state):
            if isinstance(src, KVCache):
                dst.load(src)
            else:
                self._copy_state([dst], [src])
        if self.capacity is not None:
            first = state[0]
            self.length = first.length if isinstance(first, KVCache) else int(first.length.item())

    @staticmethod
    def _copy_state(destination: list, state: list) -> None:
        """Copy per-layer state tensors into static buffers, on the device only (safe inside a graph)."""
        for dst, src in zip(destination, state):
            for d, s in zip(dst, src):
                d.copy_(s)

    def _check_capacity(self) -> None:
        if self.capacity is None:
            return
        c = self.model.config
        frames = 1 if self.stream else c.history_frames
        need = self.length + frames * c.tokens_per_frame + c.chunk_size
        if need > self.capacity:
            raise ValueError(f"history full: the Transformer's static KV cache holds {self.capacity} positions and "
                             f"this step needs {need}; reset() or a new instruction starts over (or build the runtime "
                             "with a larger kv_capacity_frames)")

    def load(self, images: dict[str, torch.Tensor], proprio: torch.Tensor, noise: torch.Tensor) -> None:
        """Copy one step's inputs into the static buffers: host images and proprio through pinned buffers with
        non-blocking copies (`PinnedUpload`), frames of another size resized on the way (`AreaResize`), the
        noise on the device."""
        images, proprio = self._upload.to_device(images, proprio)
        for c, v in images.items():
            self.images[c].copy_(self._resize(v))
        self.proprio.copy_(proprio)
        self.noise.copy_(noise)

    def fill_window(self) -> None:
        """Start a window with copies of the loaded first frame (eager, once per episode)."""
        tokens = self.model.encode_frame(self.images, self.proprio, self.task)
        self.window.copy_(tokens.repeat(1, self.model.config.history_frames - 1, 1))

    def replay(self) -> np.ndarray:
        """Run the captured step on the loaded inputs -> actions (B, H, A) on the host."""
        self._check_capacity()
        self.graph.replay()
        if self.capacity is not None and self.stream:
            self.length += self.model.config.tokens_per_frame
        return self.actions.cpu().numpy()

    def run(self, images: dict[str, torch.Tensor], proprio: torch.Tensor, noise: torch.Tensor) -> np.ndarray:
        """load() then replay(): -> actions (B, H, A) on the host."""
        self.load(images, proprio, noise)
        return self.replay()


def _stop_compile_workers() -> None:
    """End the process pool Inductor compiles in (one worker per core, started by the first compile): once
    the graph holds the compiled kernels it only idles, and while it starts (a cached compile is over in
    seconds, before the workers have imported torch) it competes with the steps for every core."""
    from torch._inductor import async_compile

    shutdown = getattr(async_compile, "shutdown_compile_workers", None)
    if shutdown is not None:
        shutdown()


def cuda_work(fn) -> tuple[list, list]:
    """Run `fn` once under torch.profiler (CUDA activity, CUPTI) -> its GPU events: (kernels, copies and
    fills), each a list of the profiler's events (`.name`, `.time_range`). Synchronises before and after."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    is_copy = [e.name.startswith(("Memcpy", "Memset", "[memcpy", "[memset")) for e in events]
    return [e for e, c in zip(events, is_copy) if not c], [e for e, c in zip(events, is_copy) if c]


class AreaResize:
    """uint8 frames (B, C, H, W) on the GPU -> (B, C, h, w) uint8 of the policy's `size`, as OpenCV's
    INTER_AREA resizes them on the host (`resize_rgb`, which made the training frames): two fp32 matmuls
    with OpenCV's own area weights (`area_weights`), rounded to whole levels (within one level of OpenCV's
    fixed-point uint8 result). A camera frame then crosses to the GPU whole (0.9 MB for 640x480) instead of
    being resized on the node's CPU, which costs more than the copy. Frames already at `size` pass through
    unchanged."""

    def __init__(self, size: tuple[int, int]):
        self.size = tuple(size)
        self._weights: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (H, W, device) -> (rows, cols)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        source = tuple(frames.shape[-2:])
        if source == self.size:
            return frames
        key = (*source, frames.device)
        if key not in self._weights:
            self._weights[key] = tuple(torch.tensor(m, device=frames.device) for m in area_weights(source, self.size))
        rows, cols = self._weights[key]
        out = rows @ (frames.float() @ cols)  # fp32: PyTorch keeps TF32 off for float32 matmuls unless told
        return out.round_().clamp_(0, 255).to(torch.uint8)


class PinnedUpload:
    """Host inputs -> the GPU through page-locked host buffers, one per input name, made on first use and
    reused every step. A frame is copied once into pinned memory, in its own memory order (an HWC frame's
    CHW view stays channels last: a plain memcpy rather than a permuting copy on the CPU), and leaves it with
    a non-blocking copy to a device tensor of the same layout: a DMA the GPU queues behind the step's launch,
    instead of a synchronous pageable cudaMemcpy through a driver staging buffer. The device op that reads it
    (`AreaResize`, a copy into a static buffer) does the reordering.

    A pinned buffer is written again only once the copies out of it have finished: `stage` waits on the
    event `issued` recorded after them (already passed when the last step ended by reading its actions back,
    so it costs nothing then; it matters when a step failed between its upload and that read)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._buffers: dict[str, torch.Tensor] = {}
        self._done = torch.cuda.Event()  # never recorded: synchronize() returns at once

    def stage(self, images: dict[str, torch.Tensor],
              proprio: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Copy the host inputs into their pinned buffers -> (images, proprio), pinned."""
        self._done.synchronize()
        staged = {}
        for name, value in [*((f"image/{c}", v) for c, v in images.items()), ("proprio", proprio)]:
            if not (value.is_contiguous() or value.is_contiguous(memory_format=torch.channels_last)):
                value = value.contiguous()  # not a layout a buffer can share (the input checks never give one)
            buffer = self._buffers.get(name)
            if (buffer is None or buffer.shape != value.shape or buffer.stride() != value.stride()
                    or buffer.dtype != value.dtype):
                buffer = self._buffers[name] = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype,
                                                                   pin_memory=True)
            staged[name] = buffer.copy_(value)
        return {c: staged[f"image/{c}"] for c in images}, staged["proprio"]

    def issued(self) -> None:
        """Mark the copies out of the staged buffers as queued on `device`'s current stream (where they go,
        also when another GPU is the current device)."""
        self._done.record(torch.cuda.current_stream(self.device))

    def to_device(self, images: dict[str, torch.Tensor],
                  proprio: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """stage(), then non-blocking copies into new tensors on `device` -> (images, proprio) there."""
        images, proprio = self.stage(images, proprio)
        images = {c: v.to(self.device, non_blocking=True) for c, v in images.items()}
        proprio = proprio.to(self.device, non_blocking=True)
        self.issued()
        return images, proprio


DTYPES = ("auto", "fp32", "bf16", "fp16")


def runtime_dtype(name: str, device: str, backend: str = "torch") -> torch.dtype | None:
    """A dtype by name (`DTYPES`) for a runtime on `device` and `backend`: "auto" is bf16 for the torch backend
    on CUDA (how the policies train, under autocast), fp32 for torch elsewhere, and None for the onnx backend
    (the dtype of the graph given, fp32 for one it exports). bf16 is the torch backend's reduced precision,
    fp16 the ONNX graph's (ONNX Runtime's CUDA provider runs fp16 on tensor cores; its bf16 coverage is partial)."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}")
    if name == "auto":
        if backend == "onnx":
            return None
        name = "bf16" if torch.device(device).type == "cuda" else "fp32"
    wrong = {"torch": "fp16", "onnx": "bf16"}.get(backend)
    if name == wrong:
        raise ValueError(f"dtype {name} is not a precision of the {backend} backend: the torch backend runs fp32 or "
                         "bf16, the onnx backend fp32 or fp16")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _compile_mode(compile_step: bool | str, graphed: bool, device: torch.device, backend: str) -> str | None:
    """compile_step -> a torch.compile mode, or None; only the captured CUDA-graph step is compiled."""
    if compile_step is False or compile_step is None:
        return None
    mode = "default" if compile_step is True else compile_step
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_step must be True, False or one of {COMPILE_MODES}, got {compile_step!r} "
                         "(modes that capture CUDA graphs themselves would nest in the runtime's own graph)")
    if not graphed:
        raise ValueError(f"compile_step compiles the captured CUDA-graph step: it needs backend 'torch' on device "
                         f"'cuda' with cuda_graph on (got backend {backend!r}, device {device.type!r}"
                         f"{', cuda_graph off' if device.type == 'cuda' and backend == 'torch' else ''})")
    return mode


def _onnx_session(model: MambaVLA, onnx_path: str | Path | None, device: str, threads: int | None,
                  cuda_graph: bool | None,
                  cuda_options: dict | None = None, dtype: torch.dtype | None = None):
    """cuda_graph None: ORT's CUDA graphs wherever its CUDA provider runs the step (its best mode there).
    dtype: the graph's (float32 or float16); None is float32 for an export, and whatever `onnx_path` holds."""
    from mambavla.runtime.onnx_step import (
        GRAPH_DTYPE_NAMES,
        GRAPH_DTYPES,
        OnnxStep,
        check_exportable,
        export_step,
        providers,
    )

    check_exportable(model.config)
    if dtype not in (None, *GRAPH_DTYPES.values()):
        raise ValueError(f"backend 'onnx' runs a float32 or float16 graph, got dtype {dtype}")
    if cuda_graph is None:
        cuda_graph = providers(device)[0] == "CUDAExecutionProvider"
    if onnx_path is not None:
        step = OnnxStep(onnx_path, model.config, batch=1, device=device, threads=threads, cuda_graph=cuda_graph,
                        cuda_options=cuda_options)
        if dtype is not None and GRAPH_DTYPES[step.dtype] != dtype:
            name = GRAPH_DTYPE_NAMES[dtype]
            node_dtype = "fp16" if step.dtype == "float16" else "fp32"
            raise ValueError(f"{onnx_path} is a {step.dtype} graph, but dtype {dtype} was asked for: ask for "
                             f"{step.dtype} (policy_node: {node_dtype}), or None / 'auto' to take the graph's own, "
                             f"or export a {name} graph")
        return step
    import shutil
    import tempfile
    import weakref

    # exported here, so removed here: once the session that reads it is gone (step_batch reopens the file while
    # it lives), or at once if the export or the session fails; a node restarted all day must not fill /tmp
    folder = Path(tempfile.mkdtemp(prefix="mambavla-onnx-"))
    try:
        step = OnnxStep(export_step(model, folder / "step.onnx", dtype or torch.float32), model.config, batch=1,
                        device=device, threads=threads, cuda_graph=cuda_graph, cuda_options=cuda_options)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(step, shutil.rmtree, folder, True)
    return step
