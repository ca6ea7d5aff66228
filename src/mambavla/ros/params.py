"""Parameter declaration with defaults and descriptions, read back as plain Python values.

Scalars are declared with dynamic typing and converted here, so `-p rate_hz:=100` (an integer on the
command line) sets a float parameter instead of failing; a value that cannot be converted is a clear
startup error.

The nodes read every parameter once, at start: they are declared read-only, so `ros2 param set`
reports failure instead of success-that-does-nothing.
"""

from __future__ import annotations

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from mambavla.parameters import check_names


def _convert(name: str, value, kind: type):
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ValueError(f"parameter {name!r}: expected {kind.__name__}, got {value!r}")


def refuse_undeclared(node: Node) -> None:
    """Raise ValueError for any parameter override `node` did not declare: call it after the last declaration."""
    # rclpy (Jazzy and Kilted) keeps overrides of undeclared names in _parameter_overrides and has no public list
    undeclared = [n for n in node._parameter_overrides if not node.has_parameter(n)]
    check_names(undeclared, list(node._parameters), node.get_name(), f"{node.get_name()}'s parameters")


def declare(node: Node, name: str, default, description: str, item_type: type | None = None, read_only: bool = True):
    """Declare `name` with `default` and `description`; return its (possibly overridden) value.

    Lists need `item_type` when the default is empty, since ROS cannot infer an empty array's type.
    """
    if isinstance(default, (list, tuple)):
        item_type = item_type or type(default[0])
        descriptor = ParameterDescriptor(description=description, dynamic_typing=True, read_only=read_only)
        value = node.declare_parameter(name, [item_type(v) for v in default], descriptor).value
        if value is None:  # `[]` in a parameter file or on the command line has no type: ROS leaves it unset
            return []
        if not isinstance(value, (list, tuple)) and not hasattr(value, "tolist"):
            raise ValueError(f"parameter {name!r}: expected a list of {item_type.__name__}, got {value!r}")
        return [_convert(name, v, item_type) for v in (value.tolist() if hasattr(value, "tolist") else value)]
    descriptor = ParameterDescriptor(description=description, dynamic_typing=True, read_only=read_only)
    return _convert(name, node.declare_parameter(name, default, descriptor).value, type(default))
