"""Build `diagnostic_msgs/DiagnosticArray` messages from plain dicts, and read them back (tests, demo)."""

from __future__ import annotations

import math

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


def _text(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def diagnostic_array(stamp, name: str, hardware_id: str, level: bytes, message: str, values: dict) -> DiagnosticArray:
    status = DiagnosticStatus(level=level, name=name, message=message[:1000], hardware_id=hardware_id)
    status.values = [KeyValue(key=k, value=_text(v)[:1000]) for k, v in values.items()]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array


def status_values(msg: DiagnosticArray, name: str) -> dict[str, str] | None:
    """The key/values of the status called `name` (plus `level` and `message`), or None if absent."""
    for status in msg.status:
        if status.name == name:
            values = {kv.key: kv.value for kv in status.values}
            values["level"] = (
                int.from_bytes(status.level, "little") if isinstance(status.level, bytes) else int(status.level)
            )
            values["message"] = status.message
            return values
    return None
