"""`mambavla export --onnx OUT`: the streaming policy step as an ONNX graph (recurrent state, task vector
and noise as inputs and outputs), checked against the torch runtime. `--bf16 OUT`: the checkpoint with its
weights stored in bfloat16 (half the size; loading casts them back to float32). Prints one JSON object."""

from __future__ import annotations

import argparse
import json
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export the streaming policy step to ONNX (for PolicyRuntime "
                                             "backend='onnx'), or a checkpoint with bf16 weights")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--onnx", metavar="OUT", help="path of the .onnx file to write")
    what.add_argument("--bf16", metavar="OUT",
                      help="checkpoint folder to write with bfloat16 weights (shipping, transfers)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoint folder (default: the shipped policy)")
    src.add_argument("--preset", help="an untrained preset instead of a checkpoint (sizing, benchmarks)")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                   help="--onnx: the graph's precision (fp16: for ONNX Runtime's CUDA provider; its scan and SSM "
                        "state stay fp32)")
    p.add_argument("--check-steps", type=int, default=20,
                   help="streamed steps compared with the torch runtime after export (fp32, CPU; 0: skip)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mambavla.model.checkpoint import convert_checkpoint, load_checkpoint, shipped_checkpoint
    from mambavla.model.config import preset
    from mambavla.model.modeling_mambavla import MambaVLA
    from mambavla.runtime.onnx_graph import export_step
    from mambavla.runtime.onnx_step import streamed_parity
    from mambavla.runtime.policy_runtime import runtime_dtype

    if args.bf16:
        if args.dtype != "fp32":
            raise ValueError("--dtype is the ONNX graph's (--onnx); --bf16 writes a checkpoint with bfloat16 weights")
        if args.preset:
            raise ValueError("--bf16 converts a checkpoint; --preset has no trained weights")
        source = str(args.checkpoint or shipped_checkpoint())
        out = convert_checkpoint(source, args.bf16)
        print(json.dumps({"checkpoint": str(out), "source": source,
                          "bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file())}, indent=2))
        return 0
    if args.preset:
        torch.manual_seed(0)
        model, source = MambaVLA(preset(args.preset)), f"preset:{args.preset}"
    else:
        path = args.checkpoint or shipped_checkpoint()
        model, source = load_checkpoint(path), str(path)
    model = model.float().eval()  # loaded in fp32 (a bf16 checkpoint too); export_step casts its copy to --dtype
    t0 = time.perf_counter()
    out = export_step(model, args.onnx, runtime_dtype(args.dtype, "cpu", backend="onnx"))
    result = {"onnx": str(out), "source": source, "dtype": args.dtype, "bytes": out.stat().st_size,
              "export_s": round(time.perf_counter() - t0, 1),
              "instruction": "not in the graph: torch computes the prefix state and task vector once per instruction"}
    if args.check_steps > 0:
        result["parity"] = streamed_parity(model, out, steps=args.check_steps)
    print(json.dumps(result, indent=2))
    return 0
