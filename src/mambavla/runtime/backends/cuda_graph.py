"""GraphStep: the whole step captured as one CUDA graph and replayed, its parts optionally compiled with
torch.compile before the capture (`compile_step`).

Possible because the step has static shapes: the Mamba state and the window have fixed sizes, and the
Transformer gets a static KV cache (`StaticKVCache`) of at least `kv_capacity_frames` frames after the
instruction (room is kept for the longest instruction, so a short one leaves space for a few frames more),
attended in full every step; a stream that outgrows it is an error until a restart."""

from __future__ import annotations

import numpy as np
import torch

from mambavla.model.fusion import KVCache, StaticKVCache
from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.runtime.backends.base import StepBackend, copy_row, empty_context
from mambavla.runtime.upload import AreaResize, PinnedUpload

KV_CAPACITY_FRAMES = 256  # frames of history the Transformer's captured step holds by default (StaticKVCache)
# torch.compile modes for `compile_step`: none that captures CUDA graphs itself ("reduce-overhead",
# "max-autotune"), since our own graph captures the compiled kernels
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
# the model methods `compile_step` compiles, each once (static shapes; `velocity` serves every flow step,
# `flow_modulations` conditions them all at once). Compiling the whole step instead unrolls the fusion stack
# once per flow step, and its compile takes several times as long as the regions'
COMPILED_REGIONS = ("encode_frame", "condition", "flow_modulations", "velocity")


def compile_mode(compile_step: bool | str | None) -> str | None:
    """`compile_step` (True, False or a mode of `COMPILE_MODES`) -> a torch.compile mode, or None."""
    if compile_step is False or compile_step is None:
        return None
    mode = "default" if compile_step is True else compile_step
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_step must be True, False or one of {COMPILE_MODES}, got {compile_step!r} "
                         "(modes that capture CUDA graphs themselves would nest in the runtime's own graph)")
    return mode


class GraphStep(StepBackend):
    """The step as one CUDA graph (`StepGraph`), captured on the first step (compiled first with a
    `compile_mode`) from the context given to `start`, then replayed: inputs are copied into its static
    buffers and it updates its own static history in place."""

    cuda_graph = True

    def __init__(self, model: MambaVLA, device: torch.device, dtype: torch.dtype, batch: int = 1,
                 kv_capacity_frames: int = KV_CAPACITY_FRAMES, compile_mode: str | None = None):
        self.model, self.device, self.dtype, self.batch = model, torch.device(device), dtype, batch
        if self.device.type != "cuda":
            raise ValueError("cuda_graph needs device 'cuda'")
        self.kv_capacity_frames, self.compile_mode = kv_capacity_frames, compile_mode
        self.resizes_on_device = not model.config.use_depth
        self.graph: StepGraph | None = None
        self._given: tuple[list, torch.Tensor] | None = None  # the context `start` gave before the capture
        self._window_empty = True  # window mode: the next step fills the window with its frame

    @property
    def upload(self):
        """The captured step's pinned upload buffers (`PinnedUpload`), once captured, else None."""
        return None if self.graph is None else self.graph._upload

    def start(self, state: list, task: torch.Tensor, row: int | None = None) -> None:
        self._window_empty = True
        if row is not None:
            held, held_task = (self.graph.state, self.graph.task) if self.graph is not None else self._given
            copy_row(held, held_task, state, task, row)
        elif self.graph is None:
            self._given = (state, task)
        else:
            self.graph.restart(state)
            self.graph.task.copy_(task)

    def step(self, images: dict[str, torch.Tensor], proprio: torch.Tensor, noise: torch.Tensor,
             timing: dict[str, float] | None = None) -> np.ndarray:
        if self.graph is None:  # the first step's inputs give the static buffers their batch and dtypes
            state, task = self._given
            self.graph = StepGraph(self.model, state, task, images, proprio, self.dtype,
                                   kv_capacity_frames=self.kv_capacity_frames, compile_mode=self.compile_mode)
            self.graph.restart(state)
        self.graph.load(images, proprio, noise)
        if self.model.config.history_mode == "window" and self._window_empty:
            self.graph.fill_window()
        self._window_empty = False
        if timing is not None:
            timing["cuda_graph"] = 1.0
        return self.graph.replay()

    def state(self) -> list:
        return self.graph.state if self.graph is not None else self._given[0]

    def batched(self, streams: int) -> GraphStep:
        """The batch's graph: the Mamba fusion's, captured uncompiled on its first step."""
        other = GraphStep(self.model, self.device, self.dtype, batch=streams)
        other.start(*empty_context(self.model, streams, self.device, self.dtype))
        return other


class StepGraph:
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

