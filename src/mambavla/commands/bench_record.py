"""`mambavla bench-record`: does recorder_node keep up with the drivers? Two cameras (default 640x480 at 30 Hz,
raw rgb8 Image) and robot state (/joint_states, /ee_pose, the controller's ~/action) at the controller's
rate are published by a driver process; recorder_node records one episode through its services. Prints JSON:
frames published, received and written, messages dropped, CPU of each process, MB per minute of bag. `--depth`:
each camera also publishes its aligned depth (16UC1 mm, as realsense-ros), which the recorder stores as sent.

Runs in a private DDS domain on localhost (`--domain`), whatever ROS_DOMAIN_ID the shell exports: its frames
must never reach a robot's graph.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench-record", help="benchmark recorder_node: cameras + robot state in, bag out (JSON)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="length of the recorded episode (default: 60)")
    p.add_argument("--cameras", type=int, default=2, help="number of cameras (default: 2)")
    p.add_argument("--size", default="480x640", help="frame size HxW (default: 480x640)")
    p.add_argument("--camera-rate", type=float, default=30.0, help="frames per second per camera (default: 30)")
    p.add_argument("--state-rate", type=float, default=200.0,
                   help="robot state and action messages per second (default: 200, controller.yaml's rate_hz)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the stored frames (default: 90)")
    p.add_argument("--depth", action="store_true", help="each camera publishes aligned depth too, recorded as sent")
    p.add_argument("--domain", type=int, default=100 + os.getpid() % 100, help="private ROS_DOMAIN_ID")
    p.add_argument("--out", default="", help="also write the JSON here")
    p.add_argument("--keep", default="", help="keep the recorded episode in this folder (default: a temporary one)")
    p.set_defaults(func=run)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run(args: argparse.Namespace) -> int:
    height, width = (int(v) for v in args.size.lower().split("x"))
    if args.seconds <= 0 or args.cameras < 1 or args.camera_rate <= 0 or args.state_rate <= 0:
        raise ValueError("--seconds, --cameras, --camera-rate and --state-rate must be positive")
    os.environ["ROS_DOMAIN_ID"] = str(args.domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    import rclpy
    from std_srvs.srv import Trigger

    from mambavla.ros.launcher import NodeProcess, wait_until
    from mambavla.ros.spin import BackgroundSpin, use_large_frame_transport

    use_large_frame_transport()
    work = Path(tempfile.mkdtemp(prefix="mambavla-bench-record-"))
    root = Path(args.keep) if args.keep else work / "episodes"
    cameras = [f"cam{k}" for k in range(args.cameras)]
    counts_file = work / "published.json"
    driver = subprocess.Popen([sys.executable, "-c", "from mambavla.commands.bench_record import drive; drive()",
                               json.dumps({"cameras": cameras, "size": [height, width], "camera_rate": args.camera_rate,
                                           "state_rate": args.state_rate, "counts": str(counts_file),
                                           "depth": args.depth})],
                              env=os.environ.copy(), start_new_session=True)
    recorder = NodeProcess("recorder_node", [], {"root": str(root), "cameras": cameras, "instruction": "benchmark",
                                                 "jpeg_quality": args.jpeg_quality, "reset_time_s": 0.0,
                                                 "depth": args.depth},
                           work / "recorder.log")
    rclpy.init()
    node = rclpy.create_node("bench_record")
    spin = BackgroundSpin(node)
    try:
        def call(name: str):
            client = node.create_client(Trigger, f"/recorder_node/{name}")
            if not client.wait_for_service(timeout_sec=60.0):
                raise RuntimeError(f"recorder_node did not come up: {recorder.log_tail()}")
            future = client.call_async(Trigger.Request())
            if not wait_until(future.done, 60.0):
                raise RuntimeError(f"~/{name} did not answer")
            return future.result()

        started = wait_until(lambda: (lambda r: r if r.success else None)(call("start")), 60.0, poll=1.0)
        if not started:
            raise RuntimeError(f"recorder_node refused to start: {call('start').message}")
        cpu0 = {name: _cpu_seconds(p) for name, p in (("recorder", recorder.process.pid), ("drivers", driver.pid))}
        wall0 = time.monotonic()
        sent0 = _published(counts_file)
        print(f"recording {args.seconds:.0f} s of {args.cameras} x {width}x{height} at {args.camera_rate:g} Hz ...",
              file=sys.stderr)
        time.sleep(args.seconds)
        sent1 = _published(counts_file)
        cpu1 = {name: _cpu_seconds(p) for name, p in (("recorder", recorder.process.pid), ("drivers", driver.pid))}
        wall = time.monotonic() - wall0
        t_save = time.monotonic()
        saved = call("save")
        save_seconds = time.monotonic() - t_save
    finally:
        spin.stop()
        rclpy.try_shutdown()
        recorder.stop()
        driver.terminate()
        driver.wait(10)
    if not saved.success:
        raise RuntimeError(f"save failed: {saved.message}")
    episode = sorted(root.glob("episode_*"))[-1]
    meta = json.loads((episode / "episode.json").read_text())
    size_mb = sum(f.stat().st_size for f in episode.iterdir()) / 1e6
    frame_topics = {t: n for t, n in meta["counts"].items() if t.startswith("/cameras/") and "depth" not in t}
    depth_topics = {t: n for t, n in meta["counts"].items() if t.startswith("/cameras/") and "depth" in t}
    written = sum(frame_topics.values())
    published = {k: sent1.get(k, 0) - sent0.get(k, 0) for k in sent1}
    result = {
        "cameras": args.cameras, "size": [height, width], "camera_rate_hz": args.camera_rate,
        "state_rate_hz": args.state_rate, "jpeg_quality": args.jpeg_quality, "seconds": round(wall, 2),
        "frames_published": published.get("frames", 0), "frames_received": meta["frames_received"],
        "frames_written": written, "dropped": meta["dropped"], "depth": args.depth,
        "depth_frames_published": published.get("depth", 0), "depth_frames_written": sum(depth_topics.values()),
        "frames_expected": int(round(args.cameras * args.camera_rate * wall)),
        "state_messages_published": published.get("state", 0),
        "state_messages_written": sum(n for t, n in meta["counts"].items() if not t.startswith("/cameras/")),
        "recorder_cpu_percent": round(100 * (cpu1["recorder"] - cpu0["recorder"]) / wall, 1),
        "drivers_cpu_percent": round(100 * (cpu1["drivers"] - cpu0["drivers"]) / wall, 1),
        "bag_mb": round(size_mb, 1), "mb_per_minute": round(size_mb * 60.0 / meta["seconds"], 1),
        "kb_per_frame": round(1e3 * size_mb / max(written, 1), 1), "save_seconds": round(save_seconds, 2),
        "recorded_dt": meta["dt"], "episode": str(episode) if args.keep else "", "cpu_count": os.cpu_count(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def _published(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def drive() -> None:
    """The driver process: camera frames and robot state at their rates; counts written ten times a second."""
    import threading

    import rclpy
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image, JointState
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from mambavla.data.bags import depth_topic
    from mambavla.ros.convert import depth_to_image, pose_to_msg, seconds_to_stamp
    from mambavla.ros.qos import SENSOR_QOS, STATE_QOS
    from mambavla.ros.spin import use_large_frame_transport
    from mambavla.spaces import ACTION_NAMES

    config = json.loads(sys.argv[1])
    use_large_frame_transport()
    rclpy.init()
    node = rclpy.create_node("bench_record_drivers")
    height, width = config["size"]
    # a smooth scene with sensor noise: JPEG sizes as a real camera's, not a flat or random frame's
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 200 // width, yy * 200 // height, (xx + yy) * 100 // (width + height) + 60], -1)
    frames = [np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8) for _ in range(8)]
    image_pubs = [node.create_publisher(Image, f"/cameras/{c}/image_raw", SENSOR_QOS) for c in config["cameras"]]
    depth_pubs = [node.create_publisher(Image, depth_topic(c), SENSOR_QOS) for c in config["cameras"]] \
        if config["depth"] else []
    # a floor sloping away, with sensor noise and the holes a stereo camera leaves
    depth_base = (600 + 900 * yy / height + rng.normal(0, 4, (height, width))).astype(np.uint16)
    depth_base[rng.random((height, width)) < 0.02] = 0
    joint_pub = node.create_publisher(JointState, "/joint_states", STATE_QOS)
    pose_pub = node.create_publisher(PoseStamped, "/ee_pose", STATE_QOS)
    action_pub = node.create_publisher(JointTrajectory, "/controller_node/action", STATE_QOS)
    counts = {"frames": 0, "state": 0, "depth": 0}
    names = [f"fr3_joint{i}" for i in range(1, 8)] + ["fr3_finger_joint1", "fr3_finger_joint2"]

    def cameras() -> None:
        period, k, next_t = 1.0 / config["camera_rate"], 0, time.monotonic()
        side, top = max(1, width // 8), height * 5 // 12  # 80 px at 640x480, from row 200
        while rclpy.ok():
            now = time.time()
            stamp = seconds_to_stamp(now)
            rgb = frames[k % len(frames)].copy()
            x = (k * 7) % max(1, width - side)
            rgb[top:top + side, x:x + side] = (200, 40, 40)  # a moving object
            for pub in depth_pubs:
                depth = depth_base.copy()
                depth[top:top + side, x:x + side] = 450  # the object, nearer than the floor
                pub.publish(depth_to_image(depth, now, "camera"))
                counts["depth"] += 1
            for pub in image_pubs:
                msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=rgb.tobytes())
                msg.header.stamp = stamp
                pub.publish(msg)
                counts["frames"] += 1
            k += 1
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))

    threading.Thread(target=cameras, daemon=True).start()
    period, next_t, last_write = 1.0 / config["state_rate"], time.monotonic(), 0.0
    while rclpy.ok():
        now = time.time()
        q = 0.1 * np.sin(now + np.arange(7))
        joints = JointState(name=names, position=[*q.tolist(), 0.04, 0.04])
        joints.header.stamp = seconds_to_stamp(now)
        joint_pub.publish(joints)
        pose_pub.publish(pose_to_msg(np.array([0.5, 0.0, 0.4]), np.array([1.0, 0.0, 0.0, 0.0]), now, "fr3_link0"))
        action = JointTrajectory(joint_names=list(ACTION_NAMES),
                                 points=[JointTrajectoryPoint(positions=[0.5, 0.0, 0.4, 0.0, 0.0, 0.0, 0.0])])
        action.header.stamp = seconds_to_stamp(now)
        action_pub.publish(action)
        counts["state"] += 3
        if now - last_write > 0.1:
            last_write = now
            Path(config["counts"]).write_text(json.dumps(counts))
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))
