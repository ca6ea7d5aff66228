"""The test probe and the BackgroundSpin it stands on: a test that destroys a publisher while the probe spins must not
leave it deaf, and a spin that dies says why."""

import sys
import threading
import time

import pytest
import rclpy
from rclpy.exceptions import InvalidHandle
from ros_harness import Probe  # first: it sets up the test DDS domain before rclpy loads
from std_msgs.msg import String

from mambavla.ros.qos import SENSOR_QOS
from mambavla.ros.spin import BackgroundSpin


@pytest.fixture(scope="module", autouse=True)
def _leave_rclpy_as_found():
    """The probe initialises rclpy's default context; later modules' commands (live replay) call rclpy.init()."""
    yield
    rclpy.try_shutdown()


def test_the_probe_outlives_publishers_destroyed_while_it_spins():
    """rclpy 9.1.2 raises InvalidHandle in a spin thread when a publisher is destroyed between the executor
    listing its QoS event handler and entering it; a probe that died there would leave later tests deaf. A 1 µs
    GIL switch interval makes that window easy to hit."""
    probe = Probe("harness_probe")
    received = []
    probe.node.create_subscription(String, "/harness_busy", lambda m: received.append(m.data), SENSOR_QOS)
    busy_pub = probe.node.create_publisher(String, "/harness_busy", SENSOR_QOS)
    stop = threading.Event()

    def keep_the_executor_busy():
        while not stop.is_set():
            busy_pub.publish(String(data="x"))
            time.sleep(0.001)

    busy = threading.Thread(target=keep_the_executor_busy, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        busy.start()
        for i in range(1500):
            pub = probe.node.create_publisher(String, "/harness_gone", 2)
            time.sleep(0.0003 * (i % 7))
            probe.node.destroy_publisher(pub)
        sys.setswitchinterval(interval)
        count = len(received)
        probe.wait_for(lambda: len(received) > count + 20, "messages after the destroyed publishers", timeout=30.0)
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        busy.join()
        probe.close()


def test_background_spin_says_why_it_stopped_and_stop_still_destroys_the_node():
    """A callback that raises ends the spinning (demo and live replay then stop waiting on a clock that stands
    still); failure() names the error, and stop() still shuts the executor down and destroys the node."""
    rclpy.try_shutdown()  # the default context down (the probe test had it up): only the node's own context runs
    context = rclpy.Context()  # so the executor must spin the node's context, not the default one
    rclpy.init(context=context)
    node = rclpy.create_node("harness_failing", context=context)
    fired = threading.Event()

    def boom():
        fired.set()
        raise RuntimeError("boom")

    node.create_timer(0.05, boom)
    spin = BackgroundSpin(node)
    assert fired.wait(10.0)
    deadline = time.monotonic() + 10.0
    while spin.failure() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert spin.failure() == "RuntimeError('boom')"
    with pytest.raises(
        RuntimeError, match=r"harness_failing stopped spinning \(RuntimeError\('boom'\)\) while waiting for chunks"
    ):
        spin.raise_if_failed("chunks")
    spin.stop()
    assert spin.failure() is None  # stopped on purpose: nothing to report
    with pytest.raises(InvalidHandle):  # the node is gone
        node.create_publisher(String, "/harness_after", 1)
    context.try_shutdown()
