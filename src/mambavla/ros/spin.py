"""One `main()` for every node: spin until SIGINT/SIGTERM, then let the node stop its threads (and the
arm) while the ROS context is still valid, then tear down.

Once shutdown starts, further SIGINT/SIGTERM are ignored: a second Ctrl-C, or launch's SIGTERM that
follows SIGINT after 5 s, must not abort the controlled stop of the arm halfway. Each node keeps its
shutdown within launch's 5 s SIGTERM timeout.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading

import rclpy
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

# The controller's executor: one thread per callback group that may wait (services) plus chunks, state and
# diagnostics. Nodes whose callbacks all share the default (mutually exclusive) group gain nothing from more
# threads and spin on one: rclpy's MultiThreadedExecutor takes camera-sized frames into such a node tens of times
# slower than a SingleThreadedExecutor, with a tail of seconds (docs/benchmarks.md, "ROS executors").
EXECUTOR_THREADS = 4

# glibc's mallopt parameters, and the largest block a node keeps for reuse: the shared-memory segment of
# config/fastdds.xml, i.e. the largest sample the transport carries (32 MB, also glibc's ceiling for the
# mmap threshold on 64-bit)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
REUSED_BLOCK_BYTES = 32 << 20


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _ignore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def use_large_frame_transport() -> None:
    """Fast DDS with a shared-memory segment that holds real camera frames (config/fastdds.xml), unless the
    user chose a profile or another middleware."""
    if os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") or os.environ.get("RMW_IMPLEMENTATION",
                                                                         "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return
    from mambavla.control.config import config_path

    try:
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(config_path("fastdds.xml"))
    except FileNotFoundError:  # an install without it: Fast DDS's defaults (frames over ~512 kB get lost)
        pass


def reuse_large_buffers() -> bool:
    """Have glibc keep freed large blocks for reuse instead of returning them to the kernel: True if it did.

    By default glibc maps every block over its mmap threshold (128 kB, raised only as mapped blocks are
    freed) from the kernel and trims the heap's free top above its trim threshold, so the buffers a
    camera frame passes through as a node takes it (Fast DDS's sample, the deserialised message, rclpy's
    Python copy: 921 kB each at 640x480 rgb8) would be faulted in page by page for every frame, hundreds of
    minor faults per frame, which make a large frame's delivery markedly slower (docs/benchmarks.md, "ROS
    executors"). A no-op where the C library has no mallopt (not glibc)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # a freed heap top is trimmed only above four of the largest blocks, so a node's frames fit in it
    return mallopt(M_MMAP_THRESHOLD, REUSED_BLOCK_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, 4 * REUSED_BLOCK_BYTES) == 1


def run_node(node_factory, args=None, threads: int = 1) -> None:
    """`threads`: 1 spins a SingleThreadedExecutor; more, a MultiThreadedExecutor for nodes with callback
    groups that run side by side (the controller's)."""
    use_large_frame_transport()  # before rclpy creates the DDS participant
    reuse_large_buffers()
    # rclpy's own handler would invalidate the context before the node could stop the arm cleanly
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    node = None
    executor = None
    try:
        node = node_factory()
        executor = SingleThreadedExecutor() if threads == 1 else MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        _ignore_signals()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()


class BackgroundSpin:
    """Spins `node` on its own SingleThreadedExecutor in a daemon thread until `stop()`: the observer nodes of the
    tools (demo, live replay) and of the tests, whose callbacks only record what arrives and touch no ROS handles.

    - A publisher or subscription destroyed while the node spins does not end the spinning. rclpy 9.1.2's executor
      lists a node's QoS event handlers before it enters them; one destroyed in between fails to enter, is kept
      anyway, and raises InvalidHandle from add_to_wait_set, which ends `executor.spin()` and leaves the node
      deaf. The next wait set no longer lists the destroyed handler, so spinning on is correct; the
      callbacks touch no handles, so an InvalidHandle comes from the wait set.
    - `stop()` ends the loop between waits (each at most `period` s) and joins the thread before it shuts the
      executor down and destroys the node: destroying a node under a spinning executor aborts in C++, and shutting
      the executor down mid-spin leaves a callback it has taken unguarded.
    - Anything else ends the thread, and so do `MAX_INVALID_HANDLES` InvalidHandles in a row (a handle that stays
      invalid); `failure()` says what, so a caller waiting for messages stops waiting."""

    MAX_INVALID_HANDLES = 100

    def __init__(self, node, period: float = 0.1):
        self.node, self.period = node, period
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._spin, name=f"spin {node.get_name()}", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        invalid = 0
        try:
            while not self._stopping.is_set() and rclpy.ok(context=self.executor.context):
                try:
                    self.executor.spin_once(timeout_sec=self.period)
                    invalid = 0
                except InvalidHandle:
                    invalid += 1
                    if invalid >= self.MAX_INVALID_HANDLES:
                        raise
        except BaseException as err:  # kept for failure(), not raised into the thread's excepthook
            self._error = err

    def failure(self) -> str | None:
        """Why the spin thread ended before `stop()` (an exception, or the ROS context shut down); None while it
        runs."""
        if self._thread.is_alive() or self._stopping.is_set():
            return None
        return repr(self._error) if self._error is not None else "the ROS context was shut down"

    def raise_if_failed(self, waiting_for: str) -> None:
        """Raise RuntimeError if the spinning ended before `stop()`: what the caller waits for would never arrive."""
        failure = self.failure()
        if failure:
            raise RuntimeError(f"{self.node.get_name()} stopped spinning ({failure}) while waiting for {waiting_for}")

    def stop(self, timeout: float = 5.0) -> None:
        """End the spinning, then shut the executor down and destroy the node. Raises if the thread is still in a
        callback after `timeout` s, leaving the node as it is rather than destroying it under the executor."""
        self._stopping.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"{self.node.get_name()}: the spin thread did not stop within {timeout} s (a callback "
                               "blocked?); its node is left as is")
        self.executor.shutdown()
        self.node.destroy_node()
