"""The streaming policy step as an ONNX graph, and an ONNX Runtime session that runs it.

Graph (`export_step`): one control step of a stream-mode Mamba policy, the recurrent state explicit:

    inputs   image_<camera> (B, C, H, W) float 0..255, proprio (B, P), task (B, d), noise (B, H, A),
             conv_<i> (B, conv_dim, d_conv - 1), ssm_<i> (B, heads, headdim, d_state) for each layer i
    outputs  actions (B, H, A) in robot units, conv_<i>_next, ssm_<i>_next

Every input and output is float32 but the conv states, which are the graph's dtype: float32, or float16
(`export_step(..., dtype=torch.float16)`: the model's weights and activations in fp16 for the CUDA
provider's tensor cores, with the SSM scan and its state in fp32 as torch's bf16 step keeps them).

The batch axis is dynamic, so one file serves one stream or many. The instruction is not in the graph:
torch computes its prefix state and task vector once per instruction (the frozen MiniLM encoder and
its tokenizer stay in transformers, the prefix has a variable length, and it runs off the step's
latency path), and they enter the graph as the first `conv_*`/`ssm_*` state and as `task`. Noise is
an input too, so ONNX Runtime and torch integrate the flow from the same draw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mambavla.model.config import MambaVLAConfig
from mambavla.model.mamba2 import Mamba2State
from mambavla.model.modeling_mambavla import MambaVLA

OPSET = 17
FORMAT = 1  # bump when the graph's inputs or outputs change
GRAPH_DTYPES = {"float32": torch.float32, "float16": torch.float16}  # name in the graph's metadata -> torch dtype
GRAPH_DTYPE_NAMES = {v: k for k, v in GRAPH_DTYPES.items()}


def state_names(config: MambaVLAConfig) -> list[str]:
    return [f"{kind}_{i}" for i in range(config.n_layers) for kind in ("conv", "ssm")]


def input_names(config: MambaVLAConfig) -> list[str]:
    return [f"image_{c}" for c in config.cameras] + ["proprio", "task", "noise"] + state_names(config)


def output_names(config: MambaVLAConfig) -> list[str]:
    return ["actions"] + [f"{name}_next" for name in state_names(config)]


class StreamingStep(nn.Module):
    """One streaming step with flat tensor inputs and outputs (what the exporter traces)."""

    def __init__(self, model: MambaVLA):
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        config = self.model.config
        k = len(config.cameras)
        dtype = self.model.pixel_mean.dtype
        per_step = [t if t.dtype == dtype else t.to(dtype) for t in inputs[:k + 3]]  # float32 in: Casts in fp16 only
        images = dict(zip(config.cameras, per_step[:k]))
        proprio, task, noise = per_step[k:k + 3]
        flat = inputs[k + 3:]
        state = [Mamba2State(flat[2 * i], flat[2 * i + 1]) for i in range(config.n_layers)]
        tokens = self.model.encode_frame(images, proprio, task)  # (B, tokens_per_frame, d)
        state = self.model.condition(tokens, state)
        actions = self.model.normalizer.unnormalize_actions(self.model.sample_actions(state, noise, task=task).float())
        return (actions, *(t for s in state for t in s))


class _NoInstructions:
    """Stands in for the frozen instruction encoder, which stays outside the graph."""

    def __init__(self, width: int):
        self.width = width

    def to(self, device) -> _NoInstructions:
        return self


def _rms_norm_symbolic(g, x, normalized_shape, weight, eps):
    """aten::rms_norm for the TorchScript exporter (it has none below opset 23): x / sqrt(mean(x^2) + eps) * w.

    The square is a Pow, the pattern ONNX Runtime's optimiser fuses into one SimplifiedLayerNormalization
    kernel (CPU and CUDA providers); with Mul(x, x) each norm stayed six kernels."""
    square = g.op("Pow", x, g.op("Constant", value_t=torch.tensor(2.0)))
    mean_square = g.op("ReduceMean", square, axes_i=list(range(-len(normalized_shape), 0)), keepdims_i=1)
    denominator = g.op("Sqrt",
                       g.op("Add", mean_square, g.op("Constant", value_t=torch.tensor(eps, dtype=torch.float32))))
    return g.op("Mul", g.op("Div", x, denominator), weight)


def example_inputs(config: MambaVLAConfig, batch: int = 1, dtype: torch.dtype = torch.float32) -> tuple[Tensor, ...]:
    """The graph's inputs for `batch` streams; `dtype` is the graph's (the conv states' dtype)."""
    h, w = config.image_size
    channels = 4 if config.use_depth else 3
    images = [torch.rand(batch, channels, h, w) * 255 for _ in config.cameras]
    d_inner = config.expand * config.d_model
    nheads, conv_dim = d_inner // config.headdim, d_inner + 2 * config.ngroups * config.d_state
    state = []
    for _ in range(config.n_layers):
        state += [torch.zeros(batch, conv_dim, config.d_conv - 1, dtype=dtype),
                  torch.zeros(batch, nheads, config.headdim, config.d_state)]
    return (*images, torch.zeros(batch, config.proprio_dim), torch.zeros(batch, config.d_model),
            torch.randn(batch, config.chunk_size, config.action_dim), *state)


def check_exportable(config: MambaVLAConfig) -> None:
    if config.fusion != "mamba" or config.history_mode != "stream":
        raise ValueError(f"ONNX export: the streaming step needs fusion 'mamba' and history_mode 'stream', "
                         f"this policy has {config.fusion!r} and {config.history_mode!r}")
    if config.vision != "resnet":
        raise ValueError(f"ONNX export: only the resnet vision encoder is exported, this policy uses {config.vision!r}")


def export_step(model: MambaVLA, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the streaming step of `model` (exported from a CPU copy in `dtype`: float32 or float16) to `path`
    (.onnx)."""
    import warnings

    if dtype not in GRAPH_DTYPE_NAMES:
        raise ValueError(f"ONNX export: dtype must be torch.float32 or torch.float16, got {dtype}")
    config = model.config
    check_exportable(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    copy = MambaVLA(config, model.normalizer.stats,
                    instruction_encoder=_NoInstructions(model.instruction_encoder.width))
    copy.load_state_dict({k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()})
    copy = copy.to(dtype).eval()  # all of it, as PolicyRuntime casts the torch model; the scan upcasts itself
    from torch.onnx import symbolic_helper

    symbolic = symbolic_helper.parse_args("v", "is", "v", "f")(_rms_norm_symbolic)
    torch.onnx.register_custom_op_symbolic("aten::rms_norm", symbolic, OPSET)
    names_in, names_out = input_names(config), output_names(config)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints taken from shapes
        torch.onnx.export(
            StreamingStep(copy), example_inputs(config, dtype=dtype), str(path), dynamo=False, opset_version=OPSET,
            input_names=names_in, output_names=names_out, dynamic_axes={n: {0: "batch"} for n in names_in + names_out},
        )
    import onnx

    graph = onnx.load(str(path))
    meta = {"mambavla_format": str(FORMAT), "config": json.dumps(config.to_dict()), "dtype": GRAPH_DTYPE_NAMES[dtype]}
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))
    return path


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


def streamed_parity(model: MambaVLA, onnx_path: str | Path, steps: int = 20, device: str = "cpu", seed: int = 0,
                    instruction: str = "pick up the red cube and place it on the blue plate",
                    cuda_graph: bool = False) -> dict:
    """Stream `steps` random observations through the torch runtime (fp32, CPU, eager) and the ONNX
    Runtime backend (its CUDA graphs with `cuda_graph`) from the same seed; -> the largest absolute action
    difference and the provider."""
    from mambavla.runtime.policy_runtime import PolicyRuntime

    reference = PolicyRuntime(model, seed=seed)
    onnx = PolicyRuntime(model, device=device, seed=seed, backend="onnx", onnx_path=onnx_path, cuda_graph=cuda_graph)
    rng = np.random.default_rng(seed)
    h, w = model.config.image_size
    worst = 0.0
    for runtime in (reference, onnx):
        runtime.set_instruction(instruction)
    for _ in range(steps):
        observation = {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in model.config.cameras},
                       "proprio": rng.normal(size=model.config.proprio_dim).astype(np.float32)}
        worst = max(worst, float(np.abs(reference.step(observation).actions - onnx.step(observation).actions).max()))
    return {"steps": steps, "max_abs_diff": worst, "provider": onnx.onnx_provider, "cuda_graph": onnx.onnx_cuda_graph,
            "graph_dtype": onnx.onnx_dtype, "reference": "torch fp32 cpu eager"}
