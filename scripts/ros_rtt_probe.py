"""Round trip of camera-sized Images between two rclpy processes, to find what a ROS setup costs.

`python scripts/ros_rtt_probe.py ping SPIN HxW N` publishes N frames (after 10 discarded), one at a time,
on /ping0../ping{CAMS-1}; a child process (`echo`) answers each complete set with an empty Image on
/pong. Prints one JSON line: round-trip percentiles in ms and frames lost (no answer within 2 s).
SPIN: 'block' (executor.spin, woken by the wait set) or 'poll' (spin_once(timeout_sec=0) in a loop).
Variants, by environment variable (all off by default, as a plain rclpy pair):
  CAMS=2           two frame topics per set, as policy_node's two cameras
  PING_DEPTH1=1    the frames with mambavla's SENSOR_QOS (best effort, depth 1) instead of rclpy's sensor profile
  PONG_COMMAND=1   the answer with COMMAND_QOS (reliable, depth 2), as /action_chunk
  ECHO_MULTI=1     the echo spins a MultiThreadedExecutor (ECHO_THREADS threads, default 4), as the nodes once did
  ECHO_THREAD=1    the echo publishes from its own thread, as policy_node's inference worker does
Run each with its own ROS_DOMAIN_ID and ROS_LOCALHOST_ONLY=1; for frames over 512 kB set
FASTDDS_DEFAULT_PROFILES_FILE=config/fastdds.xml (the nodes set it themselves). docs/benchmarks.md has results."""
import json, os, subprocess, sys, time, threading
import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

PING_QOS = qos_profile_sensor_data
PONG_QOS = qos_profile_sensor_data
if os.environ.get("PING_DEPTH1"):
    from mambavla.ros.qos import SENSOR_QOS as PING_QOS
if os.environ.get("PONG_COMMAND"):
    from mambavla.ros.qos import COMMAND_QOS as PONG_QOS
CAMS = int(os.environ.get("CAMS", "1"))

def spin(node, mode, stop, multi=False):
    ex = (rclpy.executors.MultiThreadedExecutor(num_threads=int(os.environ.get("ECHO_THREADS", "4"))) if multi else rclpy.executors.SingleThreadedExecutor()); ex.add_node(node)
    if mode == "block":
        t = threading.Thread(target=lambda: ex.spin(), daemon=True); t.start()
    else:
        def loop():
            while not stop.is_set():
                ex.spin_once(timeout_sec=0.0)
        t = threading.Thread(target=loop, daemon=True); t.start()
    return ex

def echo(mode):
    rclpy.init(); node = rclpy.create_node("probe_echo"); pub = node.create_publisher(Image, "/pong", PONG_QOS)
    fresh = set()
    def on_ping(i, m):
        fresh.add(i)
        if len(fresh) == CAMS:
            fresh.clear()
            if os.environ.get("ECHO_THREAD"):
                q.put(m.header)
            else:
                pub.publish(Image(header=m.header))
    import queue
    q = queue.Queue()
    def worker():
        while True:
            pub.publish(Image(header=q.get()))
    threading.Thread(target=worker, daemon=True).start()
    for i in range(CAMS):
        node.create_subscription(Image, f"/ping{i}", lambda m, i=i: on_ping(i, m), PING_QOS)
    stop = threading.Event(); spin(node, mode, stop, multi=bool(os.environ.get("ECHO_MULTI")))
    time.sleep(float(sys.argv[5]) if len(sys.argv) > 5 else 120)

def ping(mode, h, w, n):
    rclpy.init(); node = rclpy.create_node("probe_ping"); pubs = [node.create_publisher(Image, f"/ping{i}", PING_QOS) for i in range(CAMS)]
    got = threading.Event(); rtts = []
    def on_pong(m):
        rtts.append(time.perf_counter() - float(m.header.frame_id)); got.set()
    node.create_subscription(Image, "/pong", on_pong, PONG_QOS)
    stop = threading.Event(); spin(node, mode, stop)
    msg = Image(height=h, width=w, encoding="rgb8", step=3 * w); msg.data = bytes(h * w * 3)
    child = subprocess.Popen([sys.executable, __file__, "echo", mode, "0", "0", str(n * 0.05 + 60)])
    time.sleep(3.0)
    lost = 0
    for i in range(n + 10):
        got.clear(); msg.header.frame_id = repr(time.perf_counter())
        for pub in pubs: pub.publish(msg)
        if not got.wait(2.0): lost += 1
        time.sleep(0.01)
    child.kill(); stop.set()
    r = np.array(rtts[10:]) * 1e3
    print(json.dumps({"env": {k: v for k, v in os.environ.items() if k in ("PING_DEPTH1", "PONG_COMMAND", "CAMS", "ECHO_MULTI", "ECHO_THREAD", "ECHO_THREADS")}, "spin": mode, "size": [h, w], "n": int(r.size), "lost": lost,
                      "rtt_ms": {"p50": float(np.percentile(r, 50)), "p90": float(np.percentile(r, 90)), "p99": float(np.percentile(r, 99)), "max": float(r.max())}}), flush=True)
    os._exit(0)

if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(sys.argv[2])
    else:
        h, w = map(int, sys.argv[3].split("x")); ping(sys.argv[2], h, w, int(sys.argv[4]))
