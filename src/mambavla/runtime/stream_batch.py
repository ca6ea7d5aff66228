"""StreamBatch: B independent streams of one policy (several robots, or cameras, on one GPU) stepped
together as one batch, each with its own instruction, recurrent state and noise sequence.

Stream i behaves as a `PolicyRuntime` of seed `seeds[i]` would on its own: the same instruction prefix,
the same noise draws, the same state after every step (up to float rounding of the batched kernels).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from mambavla.model.mamba2 import Mamba2State
from mambavla.runtime.chunk import ActionChunk
from mambavla.runtime.policy_runtime import PinnedUpload, PolicyRuntime, _StepGraph


class StreamBatch:
    """Stream-mode Mamba policies only. Runs on the runtime's backend: torch (eager, or one CUDA graph
    for the whole batch where the runtime uses CUDA graphs) or ONNX Runtime (the same graph file with a
    batch of B). The batched state has one owner: the CUDA graph's static buffers, the ONNX session's
    buffers, or this object's tensors."""

    def __init__(self, runtime: PolicyRuntime, streams: int, seeds: Sequence[int] | None = None):
        config = runtime.config
        if config.fusion != "mamba" or config.history_mode != "stream":
            raise ValueError("step_batch: needs a stream-mode policy with the mamba fusion")
        if streams < 1:
            raise ValueError(f"step_batch: streams must be >= 1, got {streams}")
        seeds = list(seeds) if seeds is not None else [runtime.seed + i for i in range(streams)]
        if len(seeds) != streams:
            raise ValueError(f"step_batch: {streams} streams need {streams} seeds, got {len(seeds)}")
        self.runtime, self.config, self.streams, self.seeds = runtime, config, streams, seeds
        self.model, self.device, self.dtype = runtime.model, runtime.device, runtime.dtype
        self._generators = [torch.Generator(device=self.device) for _ in range(streams)]
        self._prefix: list[tuple[list, torch.Tensor] | None] = [None] * streams  # per stream: (prefix state, task)
        self.instructions: list[str | None] = [None] * streams
        self.frames_seen = [0] * streams
        state = [layer.mixer.empty_state(streams, self.device, self.dtype) for layer in self.model.fusion.layers]
        task = torch.zeros(streams, config.d_model, device=self.device, dtype=self.dtype)
        self._graph = self._onnx = None
        if runtime.backend == "onnx":
            from mambavla.runtime.onnx_step import OnnxStep

            self._onnx = OnnxStep(runtime._onnx.path, config, batch=streams, device=runtime._onnx.device,
                                  threads=runtime._onnx.threads, cuda_graph=runtime._onnx.cuda_graph,
                                  cuda_options=runtime._onnx.cuda_options)
        elif runtime.cuda_graph:
            h, w = config.image_size
            # the dtypes the input checks give: uint8 colour, float with depth
            images = {c: torch.zeros(streams, 4 if config.use_depth else 3, h, w, device=self.device,
                                     dtype=torch.float32 if config.use_depth else torch.uint8) for c in config.cameras}
            proprio = torch.zeros(streams, config.proprio_dim, device=self.device)
            self._graph = _StepGraph(self.model, state, task, images, proprio, self.dtype)
            state, task = self._graph.state, self._graph.task
        self._state, self._task = state, task
        # the eager CUDA step's pinned input buffers (the captured step has its own)
        self._upload = PinnedUpload(self.device) if self.device.type == "cuda" and self._graph is None else None

    # ---- per stream ------------------------------------------------------------------------------

    @torch.no_grad()
    def set_instruction(self, stream: int, text: str) -> None:
        """Give stream `stream` an instruction; its history restarts, the other streams are untouched."""
        self._check_index(stream)
        if not isinstance(text, str) or not text.strip():
            raise ValueError("instruction: expected a non-empty string")
        text = " ".join(text.split())
        tokens, mask = self.model.encode_instruction([text])
        self._prefix[stream] = (self.model.condition(tokens), self.model.task_vector(tokens, mask))
        self.instructions[stream] = text
        self.reset(stream)

    @torch.no_grad()
    def reset(self, stream: int) -> None:
        """Forget stream `stream`'s history (keeps its instruction) and restart its noise sequence."""
        self._check_index(stream)
        self._generators[stream].manual_seed(self.seeds[stream])
        self.frames_seen[stream] = 0
        if self._prefix[stream] is None:
            return
        prefix, task = self._prefix[stream]
        if self._onnx is not None:  # the session owns the state: round trip through the host
            flat = self._onnx.state()
            for buffer, row in zip(flat, (t for s in prefix for t in s)):
                buffer[stream] = row[0].numpy()
            self._task[stream] = task[0]
            self._onnx.restart(flat, self._task.numpy())
            return
        for now, row in zip(self._state, prefix):
            for dst, src in zip(now, row):
                dst[stream].copy_(src[0])
        self._task[stream].copy_(task[0])

    # ---- all streams -----------------------------------------------------------------------------

    @torch.no_grad()
    def step_batch(self, observations: Sequence[dict]) -> list[ActionChunk]:
        """One observation per stream, in stream order -> one ActionChunk per stream. Every stream steps."""
        if len(observations) != self.streams:
            raise ValueError(f"step_batch: expected {self.streams} observations (one per stream), got "
                             f"{len(observations)}")
        missing = [i for i, p in enumerate(self._prefix) if p is None]
        if missing:
            raise ValueError(f"instruction: no instruction set for stream(s) {missing}; call set_instruction() first")
        t0 = time.perf_counter()
        checked = [self.runtime._validate(o) for o in observations]
        images = {c: torch.cat([images[c] for images, _, _ in checked]) for c in self.config.cameras}  # (B, C, H, W)
        proprio = torch.cat([p for _, p, _ in checked])  # (B, P)
        noise = torch.cat([self.runtime.draw_noise(g) for g in self._generators])
        if self._onnx is not None:
            actions = self._onnx.run({c: v.float().numpy() for c, v in images.items()}, proprio.numpy(),
                                     noise.float().numpy())
        elif self._graph is not None:
            actions = self._graph.run(images, proprio, noise)
        else:
            if self._upload is not None:
                images, proprio = self._upload.to_device(images, proprio)
            tokens = self.model.encode_frame(images, proprio, self._task)
            self._state = self.model.condition(tokens, self._state)
            actions = self.model.sample_actions(self._state, noise, task=self._task)
            actions = self.model.normalizer.unnormalize_actions(actions.float()).cpu().numpy()
        total = (time.perf_counter() - t0) * 1e3
        self.frames_seen = [n + 1 for n in self.frames_seen]
        return [ActionChunk(actions=actions[i], dt=self.config.dt, stamp=stamp, action_names=self.config.action_names,
                            action_mode=self.config.action_mode, timing_ms={"total": total,
                                                                            "batch": float(self.streams)})
                for i, (_, _, stamp) in enumerate(checked)]

    def state(self, stream: int) -> list[Mamba2State]:
        """Stream `stream`'s recurrent state, per layer, batch 1 (a copy)."""
        self._check_index(stream)
        if self._onnx is not None:
            flat = [torch.from_numpy(t[stream:stream + 1]) for t in self._onnx.state()]
            return [Mamba2State(*flat[2 * i:2 * i + 2]) for i in range(len(flat) // 2)]
        return [Mamba2State(*(t[stream:stream + 1].clone() for t in s)) for s in self._state]

    def _check_index(self, stream: int) -> None:
        if not 0 <= stream < self.streams:
            raise ValueError(f"stream {stream} out of range: this batch has {self.streams} streams")
