"""What nodes and the CLI use to run a policy. `PolicyRuntime` pulls in torch, so it loads lazily."""

from mambavla.runtime.chunk import ActionChunk

__all__ = ["ActionChunk", "PolicyRuntime"]


def __getattr__(name: str):
    if name == "PolicyRuntime":
        from mambavla.runtime.policy_runtime import PolicyRuntime

        return PolicyRuntime
    raise AttributeError(name)
