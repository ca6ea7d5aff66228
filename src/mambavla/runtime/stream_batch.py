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
from mambavla.runtime.inputs import check_observation


class StreamBatch:
    """Stream-mode Mamba policies only. `runtime` is the `PolicyRuntime` whose policy, noise and backend the
    streams share: the batch steps on a backend of the same kind (`StepBackend.batched`: eager torch, one
    CUDA graph for the whole batch, or an ONNX Runtime session of the same graph file with a batch of B),
    which holds the batched state."""

    def __init__(self, runtime, streams: int, seeds: Sequence[int] | None = None):
        config = runtime.config
        if config.fusion != "mamba" or config.history_mode != "stream":
            raise ValueError("step_batch: needs a stream-mode policy with the mamba fusion")
        if streams < 1:
            raise ValueError(f"step_batch: streams must be >= 1, got {streams}")
        seeds = list(seeds) if seeds is not None else [runtime.seed + i for i in range(streams)]
        if len(seeds) != streams:
            raise ValueError(f"step_batch: {streams} streams need {streams} seeds, got {len(seeds)}")
        self.runtime, self.config, self.streams, self.seeds = runtime, config, streams, seeds
        self.model = runtime.model
        self.step_backend = runtime.step_backend.batched(streams)
        self._generators = [torch.Generator(device=runtime.device) for _ in range(streams)]
        self._prefix: list[tuple[list, torch.Tensor] | None] = [None] * streams  # per stream: (prefix state, task)
        self.instructions: list[str | None] = [None] * streams
        self.frames_seen = [0] * streams

    # ---- per stream ------------------------------------------------------------------------------

    @torch.no_grad()
    def set_instruction(self, stream: int, text: str) -> None:
        """Give stream `stream` an instruction; its history restarts, the other streams are untouched."""
        self._check_index(stream)
        text, _, prefix, task = self.runtime.prepare_instruction(text)  # the runtime's checks, gate and snap
        self._prefix[stream] = (prefix, task)
        self.instructions[stream] = text
        self.reset(stream)

    @torch.no_grad()
    def reset(self, stream: int) -> None:
        """Forget stream `stream`'s history (keeps its instruction) and restart its noise sequence."""
        self._check_index(stream)
        self._generators[stream].manual_seed(self.seeds[stream])
        self.frames_seen[stream] = 0
        if self._prefix[stream] is not None:
            self.step_backend.start(*self._prefix[stream], row=stream)

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
        checked = [check_observation(self.config, o) for o in observations]
        images = {c: torch.cat([images[c] for images, _, _ in checked]) for c in self.config.cameras}  # (B, C, h, w)
        proprio = torch.cat([p for _, p, _ in checked])  # (B, P)
        noise = torch.cat([self.runtime.draw_noise(g) for g in self._generators])  # (B, H, A)
        actions = self.step_backend.step(images, proprio, noise)  # (B, H, A)
        total = (time.perf_counter() - t0) * 1e3
        self.frames_seen = [n + 1 for n in self.frames_seen]
        return [ActionChunk(actions=actions[i], dt=self.config.dt, stamp=stamp, action_names=self.config.action_names,
                            action_mode=self.config.action_mode, timing_ms={"total": total,
                                                                            "batch": float(self.streams)})
                for i, (_, _, stamp) in enumerate(checked)]

    def state(self, stream: int) -> list[Mamba2State]:
        """Stream `stream`'s recurrent state, per layer, batch 1 (a copy)."""
        self._check_index(stream)
        return [Mamba2State(*(t[stream:stream + 1].clone() for t in s)) for s in self.step_backend.state()]

    def _check_index(self, stream: int) -> None:
        if not 0 <= stream < self.streams:
            raise ValueError(f"stream {stream} out of range: this batch has {self.streams} streams")
