"""Round trip of camera-sized Images between two rclpy processes, to find what a ROS setup costs.

    python scripts/ros_rtt_probe.py ping SPIN HxW N

publishes N frames (after 10 discarded), one set at a time, on /ping0 .. /ping{CAMS-1}; a child process
(`echo`) answers each complete set with an empty Image on /pong carrying the set's header. Prints one JSON
line: round-trip percentiles in ms and the sets with no answer within 2 s (a late answer still counts).
SPIN: 'block' (executor.spin, woken by the wait set) or 'poll' (spin_once(timeout_sec=0) in a loop).

Variants, by environment variable (all off by default: a plain rclpy pair):
  CAMS=2           two frame topics per set, as policy_node's two cameras
  PING_DEPTH1=1    the frames with mambavla's SENSOR_QOS (best effort, depth 1) instead of rclpy's sensor profile
  PONG_COMMAND=1   the answer with COMMAND_QOS (reliable, depth 2), as /action_chunk
  ECHO_MULTI=1     the echo spins a MultiThreadedExecutor of ECHO_THREADS threads (default 4), as the nodes once did
  ECHO_THREAD=1    the echo publishes from its own thread, as policy_node's inference worker does

Run each with its own ROS_DOMAIN_ID and ROS_LOCALHOST_ONLY=1; for frames over 512 kB set
FASTDDS_DEFAULT_PROFILES_FILE=config/fastdds.xml (the nodes set it themselves). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

VARIANTS = ("CAMS", "PING_DEPTH1", "PONG_COMMAND", "ECHO_MULTI", "ECHO_THREADS", "ECHO_THREAD")
CAMS = int(os.environ.get("CAMS", "1"))
PING_QOS = qos_profile_sensor_data
PONG_QOS = qos_profile_sensor_data
if os.environ.get("PING_DEPTH1"):
    from mambavla.ros.qos import SENSOR_QOS as PING_QOS
if os.environ.get("PONG_COMMAND"):
    from mambavla.ros.qos import COMMAND_QOS as PONG_QOS


def spin_in_background(node, mode: str, multi: bool = False) -> None:
    executor = MultiThreadedExecutor(num_threads=int(os.environ.get("ECHO_THREADS", "4"))) if multi else SingleThreadedExecutor()
    executor.add_node(node)
    if mode == "block":
        target = executor.spin
    else:
        def target():
            while True:
                executor.spin_once(timeout_sec=0.0)
    threading.Thread(target=target, daemon=True).start()


def echo(mode: str, seconds: float) -> None:
    rclpy.init()
    node = rclpy.create_node("probe_echo")
    pub = node.create_publisher(Image, "/pong", PONG_QOS)
    answers: queue.Queue = queue.Queue()
    fresh: set[int] = set()

    def on_ping(index: int, msg: Image) -> None:
        fresh.add(index)
        if len(fresh) < CAMS:
            return
        fresh.clear()
        if os.environ.get("ECHO_THREAD"):
            answers.put(msg.header)
        else:
            pub.publish(Image(header=msg.header))

    def answer_from_own_thread() -> None:
        while True:
            pub.publish(Image(header=answers.get()))

    if os.environ.get("ECHO_THREAD"):
        threading.Thread(target=answer_from_own_thread, daemon=True).start()
    for i in range(CAMS):
        node.create_subscription(Image, f"/ping{i}", lambda msg, i=i: on_ping(i, msg), PING_QOS)
    spin_in_background(node, mode, multi=bool(os.environ.get("ECHO_MULTI")))
    time.sleep(seconds)


def ping(mode: str, height: int, width: int, n: int) -> None:
    rclpy.init()
    node = rclpy.create_node("probe_ping")
    pubs = [node.create_publisher(Image, f"/ping{i}", PING_QOS) for i in range(CAMS)]
    answered = threading.Event()
    rtts: list[float] = []

    def on_pong(msg: Image) -> None:
        rtts.append(time.perf_counter() - float(msg.header.frame_id))
        answered.set()

    node.create_subscription(Image, "/pong", on_pong, PONG_QOS)
    spin_in_background(node, mode)
    msg = Image(height=height, width=width, encoding="rgb8", step=3 * width, data=bytes(height * width * 3))
    child = subprocess.Popen([sys.executable, __file__, "echo", mode, str(n * 0.05 + 60)])
    time.sleep(3.0)  # discovery
    unanswered = 0
    for _ in range(n + 10):
        answered.clear()
        msg.header.frame_id = repr(time.perf_counter())
        for pub in pubs:
            pub.publish(msg)
        unanswered += not answered.wait(2.0)
        time.sleep(0.01)
    child.kill()
    ms = np.array(rtts[10:]) * 1e3
    print(json.dumps({"env": {k: os.environ[k] for k in VARIANTS if k in os.environ}, "spin": mode,
                      "size": [height, width], "n": int(ms.size), "no_answer_within_2s": unanswered,
                      "rtt_ms": {q: float(np.percentile(ms, int(q[1:]))) for q in ("p50", "p90", "p99")} | {"max": float(ms.max())}}),
          flush=True)
    os._exit(0)  # the spinning threads never return


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(sys.argv[2], float(sys.argv[3]))
    else:
        h, w = (int(v) for v in sys.argv[3].split("x"))
        ping(sys.argv[2], h, w, int(sys.argv[4]))
