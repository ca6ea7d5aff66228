"""The std_srvs/Trigger answer every node gives: the result in the response, and one log line saying it."""

from __future__ import annotations

from rclpy.node import Node
from std_srvs.srv import Trigger


def answer_trigger(node: Node, name: str, response: Trigger.Response, result: tuple[bool, str]) -> Trigger.Response:
    """Fill `response` with `result` (success, message) and log it: info when done, a warning when refused."""
    response.success, response.message = result
    if response.success:  # rclpy refuses two severities from one call site
        node.get_logger().info(f"~/{name}: {response.message}")
    else:
        node.get_logger().warning(f"~/{name} refused: {response.message}")
    return response
