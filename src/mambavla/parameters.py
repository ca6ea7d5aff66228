"""One check shared by every node's parameters: a key the node does not declare is refused.

rclpy keeps an override of an undeclared name without a word, so a misspelt key in a parameter file (say
`workspace_mn` for `workspace_min`) would leave the default in force. No rclpy here: the nodes pass in what rclpy
holds, and tests check parameter files against the same list.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def check_names(names: Iterable[str], known: Iterable[str], node: str, source: str = "the parameters") -> None:
    """Raise ValueError naming every name that is not one of `known`, with the closest known name as a hint."""
    known = list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = [f"{n!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(n, known, 1)) else repr(n)
                 for n in unknown]
        raise ValueError(f"{source}: {', '.join(hints)} {'is not a' if len(unknown) == 1 else 'are not'} "
                         f"{node} parameter{'s' if len(unknown) > 1 else ''}; its parameters are {', '.join(known)}")
