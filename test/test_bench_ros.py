"""`mambavla bench-ros`: the transport floor (echo_node) and policy_node's own split, end to end over DDS."""

import json
import math
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def test_bench_ros_times_the_echo_floor_and_splits_the_policy_nodes_share(tmp_path):
    # a private DDS domain (151-232 are kept free for such tests; see ros_harness.py)
    env = {**os.environ, "ROS_DOMAIN_ID": "166", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mambavla.cli",
            "bench-ros",
            "--presets",
            "tiny",
            "--echo",
            "--chunks",
            "6",
            "--warmup",
            "2",
            "--json",
            "--plot",
            str(tmp_path / "latency.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    echo, policy = json.loads(done.stdout)["policies"]
    assert echo["echo"] == "echo_node" and echo["chunks"] == 6 and echo["cameras"] == 2
    assert 0 < echo["latency_ms"]["p50"] <= echo["latency_ms"]["max"] < 60_000  # stamped with its frames' stamp
    for target in (echo, policy):  # every measured chunk, from which the percentiles and the picture come
        assert len(target["latencies_ms"]) == 6 and max(target["latencies_ms"]) == round(target["latency_ms"]["max"], 3)
        assert target["latency_ms"]["p50"] <= target["latency_ms"]["p90"] <= target["latency_ms"]["p99"]
    image = plt.imread(tmp_path / "latency.png")
    assert image.shape[0] > 300 and image.shape[1] > 500 and image[..., :3].std() > 0.05  # drawn, not blank
    assert "inference_ms_p50" not in echo  # no policy in the echo
    assert policy["preset"] == "tiny" and policy["chunks"] == 6 and policy["node_backend"] == "torch"
    inference, node = policy["inference_ms_p50"], policy["node_latency_ms"]["p50"]
    assert math.isfinite(inference) and inference > 0
    assert node >= inference  # frame receipt -> chunk published holds the step
    assert 0 < policy["convert_ms_per_frame_p50"] < node  # and the newest frame's decoding before it
    assert (
        policy["convert_ms_per_frame_p50"] <= policy["wait_ms_p50"] < node
    )  # receipt -> step start: decoding and more
