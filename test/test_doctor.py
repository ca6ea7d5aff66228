"""`mambavla doctor` on what this machine has and lacks: a franky-sim robot on its own loopback address answers
where a closed port does not, camera topics are measured (a silent one fails), the shipped checkpoint loads and
its cameras are matched, and a machine without a GPU or a real-time kernel is told how to fix that."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from ros_harness import Probe

from mambavla.cli import main
from mambavla.model.checkpoint import shipped_checkpoint
from mambavla.ros.convert import rgb_to_image

pytestmark = [pytest.mark.ros]


def doctor(capsys, *args: str) -> tuple[int, dict[str, dict]]:
    code = main(["doctor", "--json", *args])
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] == (code == 0)
    return code, {check["name"]: check for check in report["checks"]}


def closed_port_address() -> str:
    """A loopback address where nothing listens on libfranka's port."""
    rng = random.SystemRandom()
    while True:
        host = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"
        with socket.socket() as probe:
            try:
                probe.bind((host, 1337))
            except OSError:
                continue
        return host


def test_doctor_says_how_to_fix_what_this_machine_lacks(capsys):
    import onnxruntime
    import torch

    code, checks = doctor(capsys)
    assert checks["python"]["status"] == "ok" and "numpy" in checks["python"]["detail"]
    assert checks["franky"]["status"] == "ok"
    assert checks["ros"]["status"] in ("ok", "warn") and "rclpy" in checks["ros"]["detail"]
    assert checks["dds profile"]["status"] in ("ok", "warn") and "32 MB" in checks["dds profile"]["detail"]
    if not torch.cuda.is_available():
        assert checks["torch"]["status"] == "fail" and "CUDA build" in checks["torch"]["fix"]
        assert checks["mamba-ssm"]["status"] == "warn" and checks["mamba-ssm"]["fix"]
        assert code == 1
        # a command to paste from any directory: the install script by its absolute path
        script = Path(re.search(r"bash (\S+install_robot_pc\.sh)", checks["torch"]["fix"]).group(1))
        assert script.is_absolute() and script.is_file(), checks["torch"]["fix"]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        fix = checks["onnxruntime"]["fix"]
        assert checks["onnxruntime"]["status"] == "warn" and "onnxruntime-gpu" in fix
        assert f"{sys.executable} -m pip uninstall -y onnxruntime" in fix  # this venv's pip, not whichever is first
    for check in checks.values():
        assert (check["status"] == "ok") == (check["fix"] == ""), check


def test_an_unreadable_dds_profile_chosen_by_the_user_is_named_with_the_variable_to_fix(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(tmp_path / "missing.xml"))
    code, checks = doctor(capsys)
    profile = checks["dds profile"]
    assert code == 1 and profile["status"] == "fail" and str(tmp_path / "missing.xml") in profile["detail"], profile
    assert "unset it" in profile["fix"] and "fastdds.xml" in profile["fix"], profile
    (tmp_path / "broken.xml").write_text("<profiles><unclosed>")
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(tmp_path / "broken.xml"))
    _, checks = doctor(capsys)
    assert checks["dds profile"]["status"] == "fail" and "FASTDDS_DEFAULT_PROFILES_FILE" in checks["dds profile"]["fix"]
    (tmp_path / "typo.xml").write_text("<profiles><segment_size>32MB</segment_size></profiles>")  # not a number
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(tmp_path / "typo.xml"))
    _, checks = doctor(capsys)
    profile = checks["dds profile"]
    assert profile["status"] == "fail" and "32MB" in profile["detail"], profile


def test_without_rclpy_or_torch_the_camera_and_checkpoint_checks_fail_and_the_report_is_printed(capsys, monkeypatch):
    # a shell that did not source ROS, a venv without torch: every check still reports, each with its fix
    for module in ("rclpy", "rclpy.executors", "sensor_msgs.msg", "mambavla.ros.qos", "mambavla.model.checkpoint"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    code, checks = doctor(capsys, "--camera", "front", "--listen", "0.1", "--checkpoint", "/nonexistent")
    assert code == 1 and checks["ros"]["status"] == "fail"
    assert checks["camera front"]["status"] == "fail" and "ros check" in checks["camera front"]["fix"]
    assert checks["checkpoint"]["status"] == "fail" and "torch check" in checks["checkpoint"]["fix"]


def test_real_time_checks_warn_on_a_development_machine_and_fail_for_an_arm(capsys):
    _, plain = doctor(capsys)
    _, robot = doctor(capsys, "--robot-ip", closed_port_address(), "--timeout", "0.5")
    kernel = plain["realtime kernel"]
    if kernel["status"] != "ok":  # this machine's kernel is not PREEMPT_RT
        assert kernel["status"] == "warn" and robot["realtime kernel"]["status"] == "fail"
        assert "PREEMPT_RT" in kernel["fix"]


@pytest.mark.sim
def test_doctor_reaches_a_simulated_robot_and_fails_on_a_closed_port(capsys):
    from mambavla.sim import Workcell

    with Workcell(task="lift", seed=0, camera_size=(32, 32)) as cell:
        _, checks = doctor(capsys, "--robot-ip", cell.robot_ip)
    assert checks["robot"]["status"] == "ok", checks["robot"]
    assert f"{cell.robot_ip}:1337 accepts" in checks["robot"]["detail"]
    assert "a TCP connect only" in checks["robot"]["detail"]  # ok says what it did not check: no libfranka handshake
    closed = closed_port_address()
    code, checks = doctor(capsys, "--robot-ip", closed, "--timeout", "1")
    assert code == 1 and checks["robot"]["status"] == "fail"
    assert "refuses" in checks["robot"]["detail"] and "Activate FCI" in checks["robot"]["fix"]


def test_doctor_measures_camera_topics_and_matches_the_checkpoints_cameras(capsys):
    probe = Probe("doctor_cameras")
    frame = rgb_to_image(np.zeros((48, 64, 3), dtype=np.uint8), probe.now(), "front")
    stop = threading.Event()

    def publish() -> None:
        while not stop.wait(0.05):
            probe.image_pubs["front"].publish(frame)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    checkpoint = str(shipped_checkpoint())
    try:
        code, checks = doctor(capsys, "--camera", "front=/cameras/front/image_raw", "--camera", "wrist",
                              "--listen", "2", "--checkpoint", checkpoint)
    finally:
        stop.set()
        publisher.join()
        probe.close()
    front, wrist = checks["camera front"], checks["camera wrist"]
    assert front["status"] == "ok" and "64x48 rgb8" in front["detail"], front
    assert wrist["status"] == "fail" and "/cameras/wrist/image_raw" in wrist["detail"], wrist
    assert "--camera wrist=TOPIC" in wrist["fix"], wrist
    assert code == 1
    assert checks["checkpoint"]["status"] == "ok", checks["checkpoint"]
    assert "front <- /cameras/front/image_raw" in checks["checkpoint"]["detail"]
    code, checks = doctor(capsys, "--camera", "left=/l", "--listen", "0.2", "--checkpoint", checkpoint)
    assert checks["checkpoint"]["status"] == "fail" and "cameras:=front,wrist" in checks["checkpoint"]["fix"]
    code, checks = doctor(capsys, "--checkpoint", str(shipped_checkpoint().parent))  # a folder of checkpoints
    assert checks["checkpoint"]["status"] == "fail" and "mambavla train" in checks["checkpoint"]["fix"]


def test_doctor_text_output_and_bad_camera_arguments(capsys):
    assert main(["doctor", "--camera", "=/topic"]) == 2
    assert "NAME=TOPIC" in capsys.readouterr().err
    main(["doctor"])
    out = capsys.readouterr().out
    assert "franky" in out and ("fix:" in out) == ("warn" in out or "fail" in out)
    assert out.rstrip().endswith("warnings")
    # each warn or fail line is followed by its fix line, an ok line by the next check
    lines = out.rstrip().split("\n\n")[0].splitlines()
    for line, after in zip(lines, [*lines[1:], ""]):
        if line.startswith(("ok ", "warn ", "fail ")):
            assert after.lstrip().startswith("fix: ") == (not line.startswith("ok ")), (line, after)
    counts = re.fullmatch(r"(\d+) failed, (\d+) warnings", out.rstrip().splitlines()[-1]).groups()
    assert counts == (str(sum(x.startswith("fail ") for x in lines)), str(sum(x.startswith("warn ") for x in lines)))


def test_only_an_rtprio_entry_counts_as_configured_not_the_stock_comment(tmp_path):
    from mambavla.commands.doctor import sets_rtprio

    stock = tmp_path / "limits.conf"  # Ubuntu's /etc/security/limits.conf documents rtprio in a comment
    stock.write_text("#<domain>      <type>  <item>         <value>\n#        - rtprio - max realtime priority\n")
    assert not sets_rtprio(stock)
    configured = tmp_path / "realtime.conf"
    configured.write_text("@realtime   -   rtprio   99   # Franka\n@realtime - memlock 102400\n")
    assert sets_rtprio(configured)
    assert not sets_rtprio(tmp_path / "missing.conf")


def doctor_without(tmp_path, capabilities: list[str], memlock_kb: int) -> dict:
    """doctor --json in a process whose bounding set lacks `capabilities`, with a low memlock limit (setpriv, prlimit:
    a container started without --cap-add or --ulimit)."""
    drop = ",".join(f"-{c}" for c in capabilities)
    command = ["prlimit", f"--memlock={memlock_kb * 1024}"]
    if capabilities:
        command += ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"]
    out = subprocess.run(command + [sys.executable, "-m", "mambavla.cli", "doctor", "--json"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    return {check["name"]: check for check in json.loads(out.stdout)["checks"]}


@pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("setpriv") and shutil.which("prlimit")),
                    reason="needs root (a container's user) and util-linux's setpriv and prlimit")
def test_root_with_low_memlock_needs_cap_ipc_lock_and_is_told_the_container_flag(tmp_path):
    limits = doctor_without(tmp_path, [], memlock_kb=64)["rt limits"]
    assert "memlock 64 kB" in limits["detail"] and "memlock=-1" not in limits["fix"], limits  # CAP_IPC_LOCK passes
    limits = doctor_without(tmp_path, ["ipc_lock"], memlock_kb=64)["rt limits"]
    assert limits["status"] == "warn" and "CAP_IPC_LOCK (a container?)" in limits["detail"], limits
    assert limits["fix"].startswith("run the container with") and "--ulimit memlock=-1" in limits["fix"], limits


def test_doctor_listens_to_each_cameras_depth_for_a_depth_checkpoint(capsys, tmp_path):
    import torch

    from mambavla.model.checkpoint import save_checkpoint
    from mambavla.model.config import preset
    from mambavla.model.modeling_mambavla import MambaVLA

    torch.manual_seed(0)
    checkpoint = save_checkpoint(MambaVLA(preset("tiny").replace(use_depth=True)), tmp_path / "rgbd")
    code, checks = doctor(capsys, "--camera", "front=/cam/color/image_raw", "--listen", "0.3", "--checkpoint",
                          str(checkpoint))
    depth = checks["camera front depth"]  # where policy_node would subscribe: realsense-ros's layout
    assert depth["status"] == "fail" and "/cam/aligned_depth_to_color/image_raw" in depth["detail"], depth
    assert "with depth" in checks["checkpoint"]["detail"]
    code, checks = doctor(capsys, "--camera", "front=/cam/color/image_raw/compressed", "--listen", "0.3",
                          "--checkpoint", str(checkpoint))
    depth = checks["camera front depth"]  # a compressed camera's depth beside the image it compresses
    assert depth["detail"].startswith("no frames on /cam/aligned_depth_to_color/image_raw in"), depth
    code, checks = doctor(capsys, "--camera", "front", "--listen", "0.3", "--checkpoint", str(shipped_checkpoint()))
    assert "camera front depth" not in checks  # an RGB checkpoint: no depth topic is checked
