"""`mambavla record`: record demonstrations on the robot (or the simulator), one rosbag2 per episode in the
layout training reads, with keys on the terminal and recorder_node's services (docs/recording.md).

Keys: space start | enter or right arrow save | d or left arrow discard | m mark success / failure |
i new instruction | q or Esc quit (an episode still recording is discarded).
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time

KEYS = "space start | enter/-> save | d/<- discard | m success | i instruction | q quit"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("record", help="record teleoperated demonstrations as episode bags (keys and services)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the episodes (episode_000000, ...); may hold some already")
    p.add_argument("--instruction", default="",
                   help="the task's instruction; a message on /instruction or the i key replaces it")
    p.add_argument("--cameras", nargs="+", default=["front", "wrist"], help="camera names (default: front wrist)")
    p.add_argument("--camera-topic", default="/cameras/{camera}/image_raw", help="topic pattern, {camera} = name")
    p.add_argument("--compressed", action="store_true", help="subscribe to <camera topic>/compressed (JPEG as sent)")
    p.add_argument("--depth", action="store_true",
                   help="also record each camera's depth aligned to its colour frames (RGB-D cameras)")
    p.add_argument("--depth-topic", default="",
                   help="depth topic pattern, {camera} = name (sensor_msgs/Image 16UC1 mm or 32FC1 m); default: "
                        "beside the camera topic as realsense-ros names it, .../aligned_depth_to_color/image_raw")
    p.add_argument("--compressed-depth", action="store_true",
                   help="subscribe to <depth topic>/compressedDepth (16UC1 PNG); stored as 16UC1")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of stored frames (default: 90)")
    p.add_argument("--episodes", type=int, default=0, help="stop after this many saved episodes (default: no limit)")
    p.add_argument("--episode-time", type=float, default=0.0, help="save an episode after this many s (default: never)")
    p.add_argument("--reset-time", type=float, default=5.0, help="s between episodes to reset the scene (default: 5)")
    p.add_argument("--auto-start", action="store_true", help="start the next episode when the reset time is over")
    p.add_argument("--action-topic", default="/controller_node/action",
                   help="the commanded action (controller_node's ~/action)")
    p.add_argument("--episode-meta", default="", metavar="JSON",
                   help='more fields for every episode.json, a JSON object, e.g. \'{"operator": "ana"}\'')
    p.add_argument("--kinesthetic", action="store_true",
                   help="no commanded action: the arm is guided by hand; training derives actions from the poses")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.episodes < 0:
        raise ValueError("--episodes must be >= 0")
    import rclpy
    from rclpy.parameter import Parameter

    from mambavla.ros.recorder_node import RecorderNode
    from mambavla.ros.spin import BackgroundSpin, use_large_frame_transport

    overrides = {"root": args.out, "cameras": list(args.cameras), "camera_topic": args.camera_topic,
                 "compressed_cameras": args.compressed, "jpeg_quality": args.jpeg_quality, "depth": args.depth,
                 "depth_topic": args.depth_topic, "compressed_depth": args.compressed_depth,
                 "instruction": args.instruction, "reset_time_s": args.reset_time,
                 "episode_time_s": args.episode_time, "auto_start": args.auto_start,
                 "action_topic": "" if args.kinesthetic else args.action_topic, "episode_meta": args.episode_meta}
    use_large_frame_transport()
    rclpy.init()
    node = RecorderNode(parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    spin = BackgroundSpin(node)
    terminal = Terminal() if sys.stdin.isatty() else None
    services = "services /recorder_node/start, save, discard, mark_success (stdin is not a terminal)"
    print(f"recording into {args.out}; {KEYS if terminal else services}")
    try:
        return _loop(node, spin, terminal, args.episodes)
    finally:
        if terminal:
            terminal.restore()
        print()
        try:
            spin.stop()
        finally:
            node.recorder.close()
            rclpy.try_shutdown()


def _loop(node, spin, terminal, episodes: int) -> int:
    recorder = node.recorder
    last_print = 0.0
    while True:
        spin.raise_if_failed("recorder input")
        key = terminal.key(0.1) if terminal else (time.sleep(0.1) or "")
        status = recorder.status()
        text = ""
        if key in ("q", "esc"):
            if status["state"] == "RECORDING":
                print(f"\n{recorder.discard()[1]} (quit while recording)")
            return 0
        if key == " ":
            text = node.command("start")[1]
        elif key in ("enter", "right"):
            text = node.command("save")[1]
        elif key in ("d", "left"):
            text = node.command("discard")[1]
        elif key == "m":
            text = node.command("mark_failure" if status["success"] else "mark_success")[1]
        elif key == "i":
            typed = terminal.line("instruction: ")
            if typed.strip():
                node.instruction = typed.strip()
                text = f"instruction: {node.instruction!r}"
        if text:
            print(f"\r\033[K{text}")
        if episodes and recorder.saved >= episodes and recorder.status()["state"] != "RECORDING":
            print(f"\r\033[K{recorder.saved} episodes saved in {recorder.root}")
            return 0
        now = time.monotonic()
        if terminal or now - last_print > 2.0:
            last_print = now
            line = progress_line(recorder.status(), node.instruction)
            print(f"\r\033[K{line}" if terminal else line, end="" if terminal else "\n", flush=True)


def progress_line(status: dict, instruction: str) -> str:
    state = status["state"]
    if state == "RECORDING":
        head = (f"REC {status['episode']} {status['seconds']:5.1f} s  success {'yes' if status['success'] else 'no'}")
    elif state == "RESETTING":
        head = f"reset {status['reset_left']:4.1f} s"
    else:
        head = "ready" + (f" (no input: {status['missing']})" if status["missing"] else "")
    error = f" | error {status['error']}" if status["error"] else ""
    return (f"{head} | frames in {status['frames_in']} written {status['frames_written']} dropped {status['dropped']} "
            f"| saved {status['saved']} | {instruction[:40]!r}{error}")


class Terminal:
    """Single keys from a terminal in cbreak mode (no echo, no line buffering); restored on exit."""

    ESCAPES = {"\x1b[C": "right", "\x1b[D": "left", "\x1b": "esc", "\r": "enter", "\n": "enter", "\x7f": "left"}

    def __init__(self):
        import termios
        import tty

        self.fd = sys.stdin.fileno()
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

    def key(self, timeout: float) -> str:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return ""
        text = os.read(self.fd, 16).decode(errors="replace")
        return self.ESCAPES.get(text, text[:1].lower())

    def line(self, prompt: str) -> str:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        try:
            return input(f"\r\033[K{prompt}")
        finally:
            import tty

            tty.setcbreak(self.fd)

    def restore(self) -> None:
        import termios

        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
