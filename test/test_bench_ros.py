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


def test_bench_record_counts_colour_and_depth_frames_through_a_real_recorder(tmp_path):
    """A short run of `mambavla bench-record --depth`: the JSON's counts are the bag's, and the bag reads back."""
    from mambavla.data.bags import ReadOptions, read_episode

    done = subprocess.run(
        [sys.executable, "-m", "mambavla.cli", "bench-record", "--seconds", "2", "--depth", "--size", "60x80",
         "--camera-rate", "15", "--state-rate", "100", "--domain", "167", "--keep", str(tmp_path / "kept")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["depth"] and result["frames_written"] > 20 and result["depth_frames_written"] > 20
    episode = read_episode(result["episode"], options=ReadOptions.make(depth=True))
    counts = json.loads((tmp_path / "kept" / os.path.basename(result["episode"]) / "episode.json").read_text())
    counts = counts["counts"]
    depth_counts = [n for t, n in counts.items() if "aligned_depth_to_color" in t]
    assert sum(depth_counts) == result["depth_frames_written"] and len(depth_counts) == 2
    assert set(episode.depth) == {"cam0", "cam1"} and episode.depth["cam0"].shape[1:] == (60, 80)
    assert (episode.depth["cam0"] == 450).any()  # the moving object, nearer than the floor
