"""`mambavla instruct "TEXT"`: publish an operator instruction (transient-local) and exit."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("instruct", help="publish an instruction for policy_node and exit")
    p.add_argument("text", help='what the arm should do, e.g. "pick up the red cube"')
    p.add_argument("--topic", default="/instruction", help="instruction topic (default: /instruction)")
    p.add_argument("--wait", type=float, default=5.0,
                   help="seconds to wait for a subscriber before publishing anyway (default: 5)")
    p.add_argument("--linger", type=float, default=1.0,
                   help="seconds to keep serving the message to late joiners before exiting (default: 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = " ".join(args.text.split())
    if not text:
        raise ValueError("the instruction is empty")
    import time

    import rclpy
    from std_msgs.msg import String

    from mambavla.ros.qos import LATCHED_QOS

    rclpy.init()
    node = rclpy.create_node("mambavla_instruct")
    try:
        pub = node.create_publisher(String, args.topic, LATCHED_QOS)
        deadline = time.monotonic() + args.wait
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        subscribers = pub.get_subscription_count()
        pub.publish(String(data=text))
        end = time.monotonic() + args.linger
        while time.monotonic() < end:  # transient-local: stay long enough for the subscribers to fetch it
            rclpy.spin_once(node, timeout_sec=0.05)
        print(f"published on {args.topic} to {subscribers} subscriber(s): {text!r}")
        if subscribers == 0:
            print("warning: nobody was listening; policy_node keeps only instructions it receives")
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
