"""OnnxBackend: the step in ONNX Runtime, from the graph `export_step` writes (runtime/onnx_graph.py), on the
CUDA execution provider for device 'cuda' where onnxruntime-gpu provides it, else on the CPU provider.
`OnnxStep` is the session itself, numpy in and out; the backend feeds it torch's prefix state and noise."""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch

from mambavla.model.config import MambaVLAConfig
from mambavla.model.mamba2 import Mamba2State
from mambavla.model.modeling_mambavla import MambaVLA
from mambavla.runtime.backends.base import StepBackend
from mambavla.runtime.onnx_graph import (
    FORMAT,
    GRAPH_DTYPE_NAMES,
    GRAPH_DTYPES,
    check_exportable,
    example_inputs,
    export_step,
    input_names,
    state_names,
)


class OnnxBackend(StepBackend):
    """Torch keeps only the once-per-instruction work, on the CPU in float32: the instruction prefix state and
    task vector, which enter the graph as its state and `task`, and the noise, drawn as the torch backends draw
    it. The recurrent state stays in the session's buffers (`OnnxStep`). Stream-mode Mamba policies only."""

    def __init__(self, model: MambaVLA, onnx_step: OnnxStep):
        self.model, self.onnx_step, self.batch = model, onnx_step, onnx_step.batch
        self._task = np.zeros((self.batch, model.config.d_model), np.float32)

    @classmethod
    def open(cls, model: MambaVLA, device: str | torch.device = "cpu", onnx_path: str | Path | None = None,
             dtype: torch.dtype | None = None, cuda_graph: bool | None = None, threads: int | None = None,
             cuda_options: dict | None = None) -> OnnxBackend:
        """The session for `model` on `device`, from `onnx_path`, or from a graph exported to a temporary folder.

        cuda_graph None: ORT's CUDA graphs wherever its CUDA provider runs the step (its best mode there).
        dtype: the graph's (float32 or float16, checked by `open_backend`); None is float32 for an export, and
        whatever `onnx_path` holds.
        cuda_options: CUDA provider options over `CUDA_OPTIONS`, e.g. {"use_tf32": "1"} for TF32 matmuls
        (faster, but the fp32 parity this backend promises, 1e-3, no longer holds)."""
        device = str(device)
        check_exportable(model.config)
        if cuda_graph is None:
            cuda_graph = providers(device)[0] == "CUDAExecutionProvider"
        if onnx_path is not None:
            step = OnnxStep(onnx_path, model.config, batch=1, device=device, threads=threads, cuda_graph=cuda_graph,
                            cuda_options=cuda_options)
            if dtype is not None and GRAPH_DTYPES[step.dtype] != dtype:
                name = GRAPH_DTYPE_NAMES[dtype]
                node_dtype = "fp16" if step.dtype == "float16" else "fp32"
                raise ValueError(f"{onnx_path} is a {step.dtype} graph, but dtype {dtype} was asked for: ask for "
                                 f"{step.dtype} (policy_node: {node_dtype}), or None / 'auto' to take the graph's "
                                 f"own, or export a {name} graph")
            return cls(model, step)
        # exported here, so removed here: once the session that reads it is gone (a batch's session reads the file
        # while it lives), or at once if the export or the session fails; a node restarted all day must not fill /tmp
        folder = Path(tempfile.mkdtemp(prefix="mambavla-onnx-"))
        try:
            step = OnnxStep(export_step(model, folder / "step.onnx", dtype or torch.float32), model.config, batch=1,
                            device=device, threads=threads, cuda_graph=cuda_graph, cuda_options=cuda_options)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        weakref.finalize(step, shutil.rmtree, folder, True)
        return cls(model, step)

    @property
    def onnx_provider(self) -> str:
        return self.onnx_step.provider

    @property
    def onnx_dtype(self) -> str:
        return self.onnx_step.dtype

    @property
    def onnx_cuda_graph(self) -> bool:
        return self.onnx_step.cuda_graph

    @property
    def precision(self) -> str:
        return self.onnx_step.dtype

    def start(self, state: list, task: torch.Tensor, row: int | None = None) -> None:
        given = [t.numpy() for s in state for t in s]  # flat: conv_0, ssm_0, conv_1, ...
        if row is None:
            self._task = task.numpy().copy()
            self.onnx_step.restart(given, self._task)
            return
        flat = self.onnx_step.state()  # the session owns the state: the other rows round trip through the host
        for buffer, value in zip(flat, given):
            buffer[row] = value[0]
        self._task[row] = task[0].numpy()
        self.onnx_step.restart(flat, self._task)

    def step(self, images: dict[str, torch.Tensor], proprio: torch.Tensor, noise: torch.Tensor,
             timing: dict[str, float] | None = None) -> np.ndarray:
        return self.onnx_step.run({c: v.float().numpy() for c, v in images.items()}, proprio.numpy(),
                                  noise.float().numpy())

    def state(self) -> list[Mamba2State]:
        """A copy on the host, as torch tensors (the conv states in the graph's dtype)."""
        flat = [torch.from_numpy(t) for t in self.onnx_step.state()]
        return [Mamba2State(*flat[2 * i:2 * i + 2]) for i in range(len(flat) // 2)]

    def batched(self, streams: int) -> OnnxBackend:
        """A session of its own over the same graph file, for `streams` streams, with this one's options."""
        step = self.onnx_step
        return OnnxBackend(self.model, OnnxStep(step.path, step.config, batch=streams, device=step.device,
                                                threads=step.threads, cuda_graph=step.cuda_graph,
                                                cuda_options=step.cuda_options))


# The CUDA provider's settings. TF32 off: the graph is fp32 and computes in fp32. With ORT's default
# (TF32 on) the base step's parity with torch fp32 exceeds the 1e-3 this backend promises (docs/runtime.md).
CUDA_OPTIONS = {"use_tf32": "0"}


def providers(device: str) -> list[str]:
    """CUDA execution provider on 'cuda' / 'cuda:N' where this ONNX Runtime build has it (onnxruntime-gpu), else CPU."""
    import onnxruntime as ort

    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def cuda_provider_options(device: str, cuda_graph: bool = False, cuda_options: dict | None = None) -> dict:
    """The CUDA provider's options for `device` ('cuda' is GPU 0, 'cuda:N' GPU N): `CUDA_OPTIONS`, the GPU,
    CUDA graphs if asked, then `cuda_options` over them."""
    return {**CUDA_OPTIONS, "device_id": str(torch.device(device).index or 0),
            **({"enable_cuda_graph": "1"} if cuda_graph else {}), **(cuda_options or {})}


class OnnxStep:
    """An ONNX Runtime session of the exported step for `batch` streams. The recurrent state lives in
    two sets of buffers on the provider's device, bound as inputs and outputs in turn (ORT must not write
    a buffer it reads), so it never crosses to the host between steps.

    `cuda_graph` (CUDA provider only): ORT captures the step in CUDA graphs and replays them. A captured
    graph keeps the addresses it was captured with, so every input and output lives in a device buffer
    made once and rewritten in place, and each direction of the state's ping-pong (A -> B, B -> A) is its
    own graph (`gpu_graph_id` 1 and 2), each with its own binding made once. ORT runs a graph id's first
    steps uncaptured, then captures; every step computes, so the stream is the same either way.

    `cuda_options`: CUDA provider options over `CUDA_OPTIONS`, e.g. {"use_tf32": "1"}.

    `dtype` is the graph's ("float32" or "float16", from its metadata); the state buffers take each input's
    own element type, and `restart` casts what it is given to them."""

    def __init__(self, path: str | Path, config: MambaVLAConfig, batch: int = 1, device: str = "cpu",
                 threads: int | None = None,
                 cuda_graph: bool = False, cuda_options: dict | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX step graph not found: {path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        chosen = providers(device)
        on_cuda = chosen[0] == "CUDAExecutionProvider"
        if (cuda_graph or cuda_options) and not on_cuda:  # asked for, so not to be dropped unseen
            what = "cuda_graph" if cuda_graph else f"cuda_options {cuda_options}"
            raise ValueError(f"ONNX {what} needs ONNX Runtime's CUDA execution provider (onnxruntime-gpu) and "
                             f"device 'cuda'; this build has {ort.get_available_providers()}, device {device!r}")
        provider_options = cuda_provider_options(device, cuda_graph, cuda_options) if on_cuda else {}
        if on_cuda:
            chosen[0] = ("CUDAExecutionProvider", provider_options)
        if cuda_graph:
            # a fixed batch lets ORT fold the graph's shape arithmetic (Shape/Gather/Concat, placed on the CPU
            # provider) into constants: a graph can be captured only when every node runs on CUDA
            options.add_free_dimension_override_by_name("batch", batch)
        self.session = ort.InferenceSession(str(path), options, providers=chosen)
        self.path, self.threads, self.cuda_graph, self.device = path, threads, cuda_graph, device
        self.cuda_options = cuda_options
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("mambavla_format") != str(FORMAT):
            raise ValueError(f"{path}: not a mambavla step graph of format {FORMAT} (re-run `mambavla export --onnx`)")
        exported = MambaVLAConfig.from_dict(json.loads(meta["config"]))
        if exported.replace(extra={}) != config.replace(extra={}):
            raise ValueError(f"{path}: exported from a different policy config than the one loaded")
        self.config = config
        self.dtype = meta.get("dtype", "float32")
        self.provider = self.session.get_providers()[0]
        self.device_type = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        device_id = int(provider_options.get("device_id", 0))  # the GPU the provider runs on holds the buffers
        self.batch = batch
        examples = example_inputs(config, batch)
        k = len(config.cameras)
        shapes = [tuple(t.shape) for t in examples[k + 3:]]

        element = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        types = {i.name: element[i.type] for i in self.session.get_inputs()}

        def buffer(shape, where=self.device_type, dtype=np.float32):
            return ort.OrtValue.ortvalue_from_shape_and_type(tuple(shape), dtype, where,
                                                             device_id if where == "cuda" else 0)

        self._names = state_names(config)
        self._state_dtypes = [types[n] for n in self._names]
        self._state = [[buffer(s, dtype=t) for s, t in zip(shapes, self._state_dtypes)] for _ in range(2)]
        self._task = buffer((batch, config.d_model))
        # with graphs the actions stay on the device (a captured graph cannot write host memory) and are copied back
        self._actions = buffer((batch, config.chunk_size, config.action_dim), self.device_type if cuda_graph else "cpu")
        self._current = 0
        self._inputs = {}
        if cuda_graph:  # fixed device buffers for the per-step inputs too
            self._inputs = {name: buffer(t.shape) for name, t in zip(input_names(config)[:k + 3], examples[:k + 3])
                            if name != "task"}
        self._bindings = [self._bind(parity) for parity in (0, 1)]
        self._run_options = [None, None]
        if cuda_graph:
            for parity in (0, 1):
                self._run_options[parity] = ort.RunOptions()
                self._run_options[parity].add_run_config_entry("gpu_graph_id", str(parity + 1))

    def _bind(self, parity: int):
        """The binding of a step that reads state set `parity` and writes the other one."""
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("task", self._task)
        for name, now, after in zip(self._names, self._state[parity], self._state[1 - parity]):
            binding.bind_ortvalue_input(name, now)
            binding.bind_ortvalue_output(f"{name}_next", after)
        binding.bind_ortvalue_output("actions", self._actions)
        for name, value in self._inputs.items():
            binding.bind_ortvalue_input(name, value)
        return binding

    def restart(self, state: list[np.ndarray], task: np.ndarray) -> None:
        """Set the state to continue from (flat: conv_0, ssm_0, conv_1, ...) and the task vector, all (B, ...)."""
        for buffer, value, dtype in zip(self._state[self._current], state, self._state_dtypes):
            buffer.update_inplace(np.ascontiguousarray(value, dtype=dtype))
        self._task.update_inplace(np.ascontiguousarray(task, dtype=np.float32))

    def state(self) -> list[np.ndarray]:
        """The current state, flat, copied to the host (a copy on the CPU provider too, where numpy() is a view of
        a buffer that the step after next rewrites)."""
        return [_host_copy(v) for v in self._state[self._current]]

    def run(self, images: dict[str, np.ndarray], proprio: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """images {camera: (B, C, H, W) float32}, proprio (B, P), noise (B, H, A) -> actions (B, H, A); advances
        the state."""
        binding = self._bindings[self._current]
        given = {**{f"image_{c}": images[c] for c in self.config.cameras}, "proprio": proprio, "noise": noise}
        for name, value in given.items():
            if self.cuda_graph:  # into the captured address
                self._inputs[name].update_inplace(np.ascontiguousarray(value, dtype=np.float32))
            else:
                binding.bind_cpu_input(name, value)
        self.session.run_with_iobinding(binding, self._run_options[self._current])
        self._current = 1 - self._current
        # a new array every step: the next step rewrites the output buffer under a caller that keeps this chunk
        # (replay's records did)
        return _host_copy(self._actions)


def _host_copy(value) -> np.ndarray:
    """An OrtValue's data as a numpy array of its own: numpy() of a CPU OrtValue is a view of its buffer, of a
    device one a copy already."""
    data = value.numpy()
    return data.copy() if value.device_name() == "cpu" else data
