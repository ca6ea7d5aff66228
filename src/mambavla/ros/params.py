"""Parameter declaration with defaults and descriptions, read back as plain Python values."""

from __future__ import annotations

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.node import Node

_ARRAY_TYPES = {float: ParameterType.PARAMETER_DOUBLE_ARRAY, str: ParameterType.PARAMETER_STRING_ARRAY,
                int: ParameterType.PARAMETER_INTEGER_ARRAY}


def declare(node: Node, name: str, default, description: str, item_type: type | None = None):
    """Declare `name` with `default` and `description`; return its (possibly overridden) value.

    Lists need `item_type` when the default is empty, since ROS cannot infer an empty array's type.
    """
    if isinstance(default, (list, tuple)):
        item_type = item_type or type(default[0])
        descriptor = ParameterDescriptor(description=description, type=_ARRAY_TYPES[item_type])
        value = node.declare_parameter(name, [item_type(v) for v in default], descriptor).value
        return [item_type(v) for v in value]
    value = node.declare_parameter(name, default, ParameterDescriptor(description=description)).value
    return type(default)(value) if default is not None else value
