"""Replay's view of a bag: the role finder and message reader of `mambavla.data.roles`, which training uses too.

Roles are the checkpoint's camera names plus `joint_states`, `ee_pose`, `instruction`, `actions`; the rules
are in `mambavla.data.roles`. Anything missing or unreadable raises `ReplayError` (the same class as
`BagError`) with a table of the bag's topics and types.
"""

from __future__ import annotations

from mambavla.data.roles import (
    IMAGE_TYPES,
    ROLE_TYPES,
    STATE_ROLES,
    BagError,
    BagInfo,
    Message,
    finger_positions,
    inspect,
    parse_maps,
    read_messages,
)

ReplayError = BagError

__all__ = [
    "IMAGE_TYPES",
    "ROLE_TYPES",
    "STATE_ROLES",
    "BagInfo",
    "Message",
    "ReplayError",
    "finger_positions",
    "inspect",
    "parse_maps",
    "read_messages",
]
