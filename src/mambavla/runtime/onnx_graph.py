"""The streaming policy step as an ONNX graph (`export_step`), for ONNX Runtime to run (backends/onnx.py).

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
