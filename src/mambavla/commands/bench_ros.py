"""`mambavla bench-ros`: camera-message-in to chunk-message-out latency of policy_node over Fast DDS.

For each preset, policy_node runs as a child process in `frame` mode (one inference per new set of
frames); this process plays the cameras and the robot state and measures, for every chunk received,
the time since the frames it was computed from were published (chunk stamp = frame stamp). Frames
are paced so the node is never saturated: this is the latency of one observation, not of a queue.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np


def register(subparsers: argparse._SubParsersAction) -> None:
    from mambavla.commands.bench import frame_size
    from mambavla.runtime.policy_config import DTYPES

    p = subparsers.add_parser("bench-ros", help="camera-in -> chunk-out latency of policy_node over DDS (JSON)")
    p.add_argument("--presets", default="tiny,base", help="comma-separated presets (default: tiny,base)")
    p.add_argument("--checkpoint", default="", help="benchmark this checkpoint instead of presets")
    p.add_argument("--device", default="cpu", help="policy device (default: cpu)")
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="policy_node's dtype (default auto: bf16 for the torch backend on cuda, else fp32; fp16: "
                        "the onnx backend's fp16 graph; the node's own default is fp32)")
    p.add_argument("--chunks", type=int, default=100, help="measured chunks per policy (default: 100)")
    p.add_argument("--warmup", type=int, default=10, help="chunks discarded first (default: 10)")
    p.add_argument("--camera-size", type=frame_size, metavar="HxW",
                   help="size of the published frames (default: the policy's own)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="policy_node torch threads; 0 = torch's choice (default: 1, as config/policy_sim.yaml: on a "
                        "shared CPU of few cores more threads oversubscribe and inference gets several times slower)")
    p.add_argument("--backend", default="torch", choices=("torch", "onnx"),
                   help="policy_node's backend (onnx: ONNX Runtime, the graph exported when the node loads)")
    p.add_argument("--compile-step", default="", choices=("", "default", "max-autotune-no-cudagraphs"),
                   help="policy_node's compile_step (torch on cuda: the captured step compiled with torch.compile; "
                        "the node compiles at load, before the first chunk). Default: the plain CUDA graph")
    p.add_argument("--echo", action="store_true",
                   help="also time echo_node in policy_node's place (the cameras of the first preset, no decoding, no "
                        "policy): the transport floor of DDS and rclpy on the machine, both ways")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--plot", default="", metavar="PNG",
                   help="also draw each target's latency distribution (CDF, the tail on a log scale) to this PNG")
    p.add_argument("--images", action="store_true",
                   help="only time the node's image conversion (raw/JPEG/PNG 640x480 and 1280x720 to 128x128), no DDS")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.images:
        from mambavla.commands.bench_images import run as bench_images

        return bench_images()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    from mambavla.ros.spin import use_large_frame_transport

    use_large_frame_transport()  # camera-sized frames (640x480 rgb8 is 921 kB) need it on the publisher too
    import rclpy

    from mambavla.model.config import preset

    def config_of(kind: str, name: str):
        if kind == "checkpoint":
            from mambavla.model.checkpoint import load_config

            return load_config(name)
        return preset(name)

    if args.checkpoint:
        sources = [("checkpoint", args.checkpoint)]
    else:
        sources = [("preset", p) for p in args.presets.split(",") if p]
    targets = [(kind, name, config_of(kind, name)) for kind, name in sources]
    if args.echo:  # with the first policy's cameras and frame size (tiny's when none is named)
        targets.insert(0, ("echo", "echo_node", targets[0][2] if targets else preset("tiny")))
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    rclpy.init()
    results = {"device": args.device, "dtype": args.dtype, "backend": args.backend, "compile_step": args.compile_step,
               "cpu_count": os.cpu_count(),
               "torch_threads": args.torch_threads, "policies": []}
    try:
        for kind, name, config in targets:
            size = args.camera_size or tuple(config.image_size)
            log(f"{kind} {name}: {args.warmup} + {args.chunks} chunks, frames {size[0]}x{size[1]} ...")
            result = _bench_one(kind, name, config, size, args)
            results["policies"].append(result)
            lat = result["latency_ms"]
            log(f"  camera-in -> chunk-out: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, mean {lat['mean']:.1f} ms"
                + ("" if kind == "echo" else f" (in the node p50 {result['node_latency_ms']['p50']:.1f} ms: inference "
                                             f"{result['inference_ms_p50']:.1f} ms, receipt to step "
                                             f"{result['wait_ms_p50']:.1f} ms, decode (+ resize on the CPU) "
                                             f"{result['convert_ms_per_frame_p50']:.1f} ms a frame)"))
    finally:
        rclpy.try_shutdown()
    if args.plot:
        log(f"plot: {plot_latencies(args.plot, results)}")
    print(json.dumps(results, indent=2))
    return 0


def plot_latencies(path: str, results: dict) -> str:
    """camera-in -> chunk-out of every target as the fraction of chunks slower than each latency: the median
    and the tail (p99 = 1 %) of each curve at a glance, beside a 5 ms line."""
    from mambavla.evaluation.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for target in results["policies"]:
        latencies = np.sort(np.asarray(target["latencies_ms"]))
        slower = 1.0 - np.arange(len(latencies)) / len(latencies)
        name = target.get("preset") or target.get("checkpoint")
        label = "echo_node (transport floor)" if "echo" in target else f"{name}"
        p50, p99 = target["latency_ms"]["p50"], target["latency_ms"]["p99"]
        ax.step(latencies, slower, where="post", label=f"{label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    ax.axvline(5.0, color="grey", linestyle="--", linewidth=1, label="5 ms")
    ax.set_yscale("log")
    ax.set_xlabel("camera-in -> chunk-out (ms)")
    ax.set_ylabel("fraction of chunks slower")
    step = results["compile_step"] and f", torch.compile {results['compile_step']}"
    ax.set_title(f"bench-ros: {results['device']} {results['backend']}{step or ''}, {results['cpu_count']} CPUs",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _bench_one(kind: str, name: str, config, size: tuple[int, int], args) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory

    from mambavla.ros.convert import pose_to_msg, rgb_to_image, seconds_to_stamp, stamp_to_seconds
    from mambavla.ros.diagnostics import status_values
    from mambavla.ros.launcher import NodeProcess
    from mambavla.ros.qos import COMMAND_QOS, DIAGNOSTICS_QOS, LATCHED_QOS, SENSOR_QOS, STATE_QOS
    from mambavla.ros.spin import BackgroundSpin
    from mambavla.spaces import EE_REFERENCE_QUAT

    node = rclpy.create_node("mambavla_bench_ros")
    latencies: list[float] = []
    received = threading.Event()
    status: dict = {}

    def on_chunk(msg):
        latencies.append(node.get_clock().now().nanoseconds * 1e-9 - stamp_to_seconds(msg.header.stamp))
        received.set()

    def on_diag(msg):
        values = status_values(msg, "mambavla/policy_node")
        if values:
            status.update(values)

    node.create_subscription(JointTrajectory, "/action_chunk", on_chunk, COMMAND_QOS)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, DIAGNOSTICS_QOS)
    cams = {c: node.create_publisher(Image, f"/cameras/{c}/image_raw", SENSOR_QOS) for c in config.cameras}
    pose_pub = node.create_publisher(PoseStamped, "/ee_pose", STATE_QOS)
    joint_pub = node.create_publisher(JointState, "/joint_states", STATE_QOS)
    node.create_publisher(String, "/instruction", LATCHED_QOS).publish(String(data="pick up the red cube"))
    spin = BackgroundSpin(node)
    topics = [f"/cameras/{c}/image_raw" for c in config.cameras]
    if kind == "echo":
        policy = NodeProcess("echo_node", [], {"camera_topics": topics})
    else:
        params = {"infer_mode": "frame", "device": args.device, "dtype": args.dtype,
                  "torch_threads": args.torch_threads, "backend": args.backend, "compile_step": args.compile_step,
                  "max_observation_age": 5.0, "camera_topics": topics,
                  "checkpoint": name if kind == "checkpoint" else "", "preset": name if kind == "preset" else "tiny"}
        policy = NodeProcess("policy_node", ["policy.yaml"], params)
    rng = np.random.default_rng(0)
    # each camera's messages built once: a camera driver fills its buffer in C, so the 921 kB bytes -> message
    # copies of a Python-built frame (rgb_to_image) are no part of the latency; only the stamp changes
    pixels = [rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8) for _ in range(8)]
    frames = {cam: [rgb_to_image(rgb, 0.0, cam) for rgb in pixels] for cam in cams}
    try:
        total = args.warmup + args.chunks
        # the node compiles before its first chunk
        deadline = time.monotonic() + (900.0 if args.compile_step else 300.0)
        k = 0
        while len(latencies) < total and time.monotonic() < deadline:
            if not policy.alive:
                raise RuntimeError(f"policy_node exited:\n{policy.log_tail()}")
            spin.raise_if_failed("chunks")
            now = node.get_clock().now().nanoseconds * 1e-9
            pose_pub.publish(pose_to_msg(np.array([0.55, 0.0, 0.4]), EE_REFERENCE_QUAT, now, "fr3_link0"))
            js = JointState(name=[f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1", "fr3_finger_joint2"],
                            position=[0.0] * 7 + [0.04, 0.04])
            js.header.stamp = seconds_to_stamp(now)
            joint_pub.publish(js)
            received.clear()
            for cam, pub in cams.items():  # one observation: every camera, one stamp
                frame = frames[cam][k % len(pixels)]
                frame.header.stamp = seconds_to_stamp(now)
                pub.publish(frame)
            k += 1
            received.wait(timeout=2.0)  # next observation only after this one's chunk: no queueing
            time.sleep(0.02)
        if len(latencies) < total:
            raise RuntimeError(f"only {len(latencies)} of {total} chunks in time:\n{policy.log_tail()}")
        if kind != "echo":
            time.sleep(1.5)  # one more diagnostics message with the inference time
    finally:
        policy.stop()
        spin.stop()
    lat = np.array(latencies[args.warmup:]) * 1e3
    result = {
        kind: name,
        "camera_size": list(size),
        "cameras": len(config.cameras),
        "chunks": int(len(lat)),
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                       "p99": float(np.percentile(lat, 99)), "mean": float(lat.mean()), "max": float(lat.max())},
        "latencies_ms": [round(float(v), 3) for v in lat],  # in the order measured
    }
    if kind != "echo":
        # inside policy_node, over its last 500 chunks (warm-up included, hence the medians): frame receipt ->
        # chunk published, and the step itself; the rest of camera-in -> chunk-out is DDS both ways
        stat = lambda key: float(status.get(key, "nan"))  # noqa: E731
        result.update(chunk_size=config.chunk_size, node_backend=status.get("backend", ""),
                      inference_ms_p50=stat("p50_inference_ms"),
                      inference_ms_mean=stat("mean_inference_ms"), convert_ms_per_frame_p50=stat("p50_convert_ms"),
                      wait_ms_p50=stat("p50_wait_ms"),
                      node_latency_ms={"p50": stat("p50_latency_ms"), "p99": stat("p99_latency_ms")})
    return result
