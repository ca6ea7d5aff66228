"""Round trip of camera-sized Images between two rclpy processes, to find what a ROS setup costs.

    python scripts/ros_rtt_probe.py ping SPIN HxW N
    python scripts/ros_rtt_probe.py os - HxW N

publishes N frames (after 10 discarded), one set at a time, on /ping0 .. /ping{CAMS-1}; a child process
(`echo`) answers each complete set with an empty Image on /pong carrying the set's header. Prints one JSON
line: round-trip percentiles in ms and the sets with no answer within 2 s (a late answer still counts).
SPIN: 'block' (executor.spin, woken by the wait set) or 'poll' (spin_once(timeout_sec=0) in a loop).
Each set follows the last one's answer after PACE_MS (default 10) ms; "slow" lists the sets over 5 ms as
[seconds since the first set, round trip ms], to tell a periodic stall from scattered ones.

`os` is the same exchange without ROS: the child process copies CAMS frames out of a shared-memory block
that the parent filled, woken through a pipe, and answers through another; the floor a sleeping process's
wake-ups and the copies set on that machine, with the same pacing.

Variants, by environment variable (all off by default: a plain rclpy pair):
  CAMS=2           two frame topics per set, as policy_node's two cameras
  PING_DEPTH1=1    the frames with mambavla's SENSOR_QOS (best effort, depth 1) instead of rclpy's sensor profile
  PONG_COMMAND=1   the answer with COMMAND_QOS (reliable, depth 2), as /action_chunk
  ECHO_MULTI=1     the echo spins a MultiThreadedExecutor of ECHO_THREADS threads (default 4), as the nodes once did
  ECHO_THREAD=1    the echo publishes from its own thread, as policy_node's inference worker does
  REUSE=1          both sides keep freed large blocks for reuse (mambavla.ros.spin.reuse_large_buffers), as the nodes do
  EVENTS=1         both sides spin rclpy's C++ EventsExecutor (rclpy.experimental) instead of a SingleThreadedExecutor
                   (rclpy 9.1.2's PyPI wheels: it fires no callback at all, and the probe hangs; docs/benchmarks.md)

Run each with its own ROS_DOMAIN_ID and ROS_LOCALHOST_ONLY=1; for frames over 512 kB set
FASTDDS_DEFAULT_PROFILES_FILE=config/fastdds.xml (the nodes set it themselves). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import threading
import time

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

PACE_S = float(os.environ.get("PACE_MS", "10")) * 1e-3
VARIANTS = ("CAMS", "PING_DEPTH1", "PONG_COMMAND", "ECHO_MULTI", "ECHO_THREADS", "ECHO_THREAD", "EVENTS", "REUSE")
CAMS = int(os.environ.get("CAMS", "1"))
PING_QOS = qos_profile_sensor_data
PONG_QOS = qos_profile_sensor_data
if os.environ.get("PING_DEPTH1"):
    from mambavla.ros.qos import SENSOR_QOS as PING_QOS
if os.environ.get("PONG_COMMAND"):
    from mambavla.ros.qos import COMMAND_QOS as PONG_QOS


def spin_in_background(node, mode: str, multi: bool = False) -> None:
    if multi:
        executor = MultiThreadedExecutor(num_threads=int(os.environ.get("ECHO_THREADS", "4")))
    elif os.environ.get("EVENTS"):
        from rclpy.experimental import EventsExecutor

        executor = EventsExecutor()
    else:
        executor = SingleThreadedExecutor()
    executor.add_node(node)
    if mode == "block":
        target = executor.spin
    else:
        def target():
            while True:
                executor.spin_once(timeout_sec=0.0)
    threading.Thread(target=target, daemon=True).start()


def init() -> None:
    if os.environ.get("REUSE"):
        from mambavla.ros.spin import reuse_large_buffers

        reuse_large_buffers()
    rclpy.init()


def echo(mode: str, seconds: float) -> None:
    init()
    node = rclpy.create_node("probe_echo")
    pub = node.create_publisher(Image, "/pong", PONG_QOS)
    answers: queue.Queue = queue.Queue()
    fresh: set[int] = set()

    def on_ping(index: int, msg: Image) -> None:
        fresh.add(index)
        if len(fresh) < CAMS:
            return
        fresh.clear()
        # the set's receipt: CLOCK_MONOTONIC, one clock for both processes
        msg.header.frame_id += f" {time.perf_counter()!r}"
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
    init()
    node = rclpy.create_node("probe_ping")
    pubs = [node.create_publisher(Image, f"/ping{i}", PING_QOS) for i in range(CAMS)]
    answered = threading.Event()
    rtts: list[float] = []
    legs: list[tuple[float, float]] = []  # frames published -> the echo has the set; the echo has it -> answer here

    def on_pong(msg: Image) -> None:
        now = time.perf_counter()
        sent_at, received_at = (float(v) for v in msg.header.frame_id.split())
        rtts.append(now - sent_at)
        legs.append((received_at - sent_at, now - received_at))
        answered.set()

    node.create_subscription(Image, "/pong", on_pong, PONG_QOS)
    spin_in_background(node, mode)
    msg = Image(height=height, width=width, encoding="rgb8", step=3 * width, data=bytes(height * width * 3))
    child = subprocess.Popen([sys.executable, __file__, "echo", mode, str(n * 0.05 + 60)])
    time.sleep(3.0)  # discovery
    unanswered, sent, publish = 0, [], []
    for _ in range(n + 10):
        answered.clear()
        sent.append(time.perf_counter())
        msg.header.frame_id = repr(sent[-1])
        for pub in pubs:
            pub.publish(msg)
        publish.append(time.perf_counter() - sent[-1])
        unanswered += not answered.wait(2.0)
        time.sleep(PACE_S)
    child.kill()
    report(mode, height, width, sent, rtts, unanswered, legs, publish)
    os._exit(0)  # the spinning threads never return


def report(mode: str, height: int, width: int, sent: list[float], rtts: list[float], unanswered: int,
           legs: list[tuple[float, float]] = (), publish: list[float] = ()) -> None:
    ms = np.array(rtts[10:]) * 1e3
    start = sent[10] if len(sent) > 10 else 0.0
    # (sets and answers pair up in order: exact while every set is answered, as in the runs reported)
    slow = [[round(t - start, 3), round(r * 1e3, 2)] for t, r in zip(sent[10:], rtts[10:]) if r > 5e-3]
    start_unix = time.time() - (time.perf_counter() - start)  # to line up the slow sets of runs side by side
    def percentiles(values) -> dict:
        return {q: float(np.percentile(values, int(q[1:]))) for q in ("p50", "p90", "p99")}

    print(json.dumps({"env": {k: os.environ[k] for k in VARIANTS if k in os.environ}, "spin": mode,
                      "size": [height, width], "n": int(ms.size), "pace_ms": PACE_S * 1e3,
                      "start_unix": round(start_unix, 3), "no_answer_within_2s": unanswered,
                      "rtt_ms": percentiles(ms) | {"max": float(ms.max())},
                      **({"legs_ms": {name: percentiles(leg)
                                      for name, leg in zip(("frames_in", "answer_out"),
                                                           np.array(legs[10:]).T * 1e3)}} if legs else {}),
                      **({"publish_calls_ms_p50": float(np.median(publish[10:]) * 1e3)} if publish else {}),
                      "slow": slow}),
          flush=True)


def os_pair(height: int, width: int, n: int) -> None:
    """The exchange without ROS: a shared-memory block, two pipes, a forked child that copies the frames out."""
    from multiprocessing import shared_memory

    nbytes = CAMS * height * width * 3
    block = shared_memory.SharedMemory(create=True, size=nbytes)
    frames = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    from_parent, to_child = os.pipe()
    from_child, to_parent = os.pipe()
    if os.fork() == 0:
        os.close(to_child)  # so that the parent's close reaches this end as EOF
        os.close(from_child)
        view = np.ndarray(nbytes, np.uint8, block.buf)
        while True:
            select.select([from_parent], [], [])
            stamp = os.read(from_parent, 8)
            if not stamp:
                os._exit(0)
            view.copy()  # as a subscriber takes the sample into its own message
            os.write(to_parent, stamp)
    view = np.ndarray(nbytes, np.uint8, block.buf)
    sent, rtts = [], []
    for _ in range(n + 10):
        sent.append(time.perf_counter())
        view[:] = frames  # as a publisher serialises the frames into the transport's segment
        os.write(to_child, b"12345678")
        select.select([from_child], [], [])
        os.read(from_child, 8)
        rtts.append(time.perf_counter() - sent[-1])
        time.sleep(PACE_S)
    os.close(to_child)
    del view
    block.close()
    block.unlink()
    report("os", height, width, sent, rtts, 0)


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(sys.argv[2], float(sys.argv[3]))
    else:
        h, w = (int(v) for v in sys.argv[3].split("x"))
        if sys.argv[1] == "os":
            os_pair(h, w, int(sys.argv[4]))
        else:
            ping(sys.argv[2], h, w, int(sys.argv[4]))
