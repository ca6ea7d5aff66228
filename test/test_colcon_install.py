"""The package as a robot PC installs it: `python -m colcon build` from the project's virtualenv into a scratch
workspace (colcon-core, colcon-python-setup-py and colcon-ros from the lock), the install layout `ros2 launch`
and `ros2 run` rely on, node scripts that start the virtualenv's interpreter, and the installed nodes (not the
source tree) running against the simulator after `. install/setup.sh`."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what docker/Dockerfile copies into its workspace: the package, nothing of the development tree
PACKAGE_FILES = ("package.xml", "setup.py", "setup.cfg", "README.md", "resource", "bin", "src", "launch", "config")
NODE_SCRIPTS = ("controller_node", "policy_node", "sim_node", "recorder_node", "mambavla")  # the nodes, then the CLI


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("colcon_ws")
    source = ws / "src" / "mambavla"
    source.mkdir(parents=True)
    for name in PACKAGE_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif path.exists():
            shutil.copy2(path, source / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMENT_", "COLCON_"))}
    build = subprocess.run([sys.executable, "-m", "colcon", "build", "--base-paths", "src"], cwd=ws, env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return ws


def install_env(ws: Path) -> dict:
    """The environment `. install/setup.sh` gives a shell (PYTHONPATH, AMENT_PREFIX_PATH, PATH)."""
    out = subprocess.run(["sh", "-c", f". {shlex.quote(str(ws / 'install' / 'setup.sh'))} && env -0"],
                         capture_output=True, timeout=60, check=True, env=dict(os.environ))
    return dict(entry.split("=", 1) for entry in out.stdout.decode().split("\0") if "=" in entry)


def test_colcon_build_installs_launch_files_configs_and_node_scripts(workspace):
    prefix = workspace / "install" / "mambavla"
    share = prefix / "share" / "mambavla"
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "mambavla").is_file()
    assert (workspace / "install" / "setup.bash").is_file()  # what docs/robot.md has users source (colcon-bash)
    assert (share / "package.xml").read_text() == (ROOT / "package.xml").read_text()
    launch_files = sorted(p.name for p in (ROOT / "launch").glob("*.launch.py"))
    assert sorted(p.name for p in (share / "launch").iterdir()) == launch_files
    shipped = {p.name for p in (ROOT / "config").iterdir() if p.suffix in (".yaml", ".xml")}
    assert {p.name for p in (share / "config").iterdir()} == shipped
    assert "fastdds.xml" in shipped and "controller.yaml" in shipped
    for script in NODE_SCRIPTS:
        assert os.access(prefix / "lib" / "mambavla" / script, os.X_OK), f"lib/mambavla/{script} missing"
    assert os.access(prefix / "bin" / "mambavla", os.X_OK)  # the CLI on PATH after sourcing the workspace
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "mambavla"
    assert (site / "ros" / "controller_node.py").is_file()
    assert any((site / "policies").rglob("*.safetensors")), "the shipped policy is not installed"


def test_installed_node_scripts_start_the_virtualenvs_interpreter(workspace):
    for script in NODE_SCRIPTS:
        first = (workspace / "install" / "mambavla" / "lib" / "mambavla" / script).read_text().splitlines()[0]
        assert first == f"#!{sys.executable}", f"{script} starts {first!r}: it would run without torch and franky"


def test_installed_node_scripts_start_through_the_module_that_takes_signals_during_imports(workspace):
    # colcon's scripts load their entry point from the installed metadata
    found = list((workspace / "install" / "mambavla" / "lib").glob("python*/site-packages/mambavla-*/entry_points.txt"))
    assert len(found) == 1, found
    entry_points = configparser.ConfigParser()
    entry_points.read(found[0])
    for node in NODE_SCRIPTS[:-1]:
        assert entry_points["console_scripts"][node] == f"mambavla.ros.entry:{node}"


def test_the_sourced_workspace_imports_the_installed_copy_and_finds_its_config(workspace):
    env = install_env(workspace)
    code = ("import mambavla.control.config as c; print(c.__file__); print(c.config_path('controller.yaml')); "
            "print(c.config_path('fastdds.xml'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    module, controller_yaml, fastdds = out.stdout.split()
    install = str(workspace / "install" / "mambavla")
    assert module.startswith(install) and controller_yaml.startswith(install) and fastdds.startswith(install)
    cli = subprocess.run(["sh", "-c", "command -v mambavla"], env=env, capture_output=True, text=True, timeout=10)
    assert cli.stdout.strip() == f"{install}/bin/mambavla"


@pytest.mark.ros
@pytest.mark.sim
@pytest.mark.slow
def test_installed_nodes_run_against_the_simulator_and_stop_on_ctrl_c(workspace, tmp_path):
    from ros_harness import Probe

    env = install_env(workspace)
    prefix = workspace / "install" / "mambavla"
    config = prefix / "share" / "mambavla" / "config"
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(node: str, files: list[str], **overrides) -> subprocess.Popen:
        cmd = [str(prefix / "lib" / "mambavla" / node), "--ros-args"]
        for name in files:
            cmd += ["--params-file", str(config / name)]
        for key, value in overrides.items():
            cmd += ["-p", f"{key}:={json.dumps(value)}"]
        log = tmp_path / f"{node}.log"
        process = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        started.append((process, log))
        return process

    probe = Probe("install_probe")
    try:
        start("sim_node", ["sim_node.yaml"], camera_rate_hz=1.0, camera_size=[32, 32])
        task = probe.wait_for(lambda: probe.task, "the installed sim_node's /sim/task")
        controller = start("controller_node", ["controller.yaml", "controller_sim.yaml"], robot_ip=task["robot_ip"],
                           diagnostics_rate_hz=10.0)
        status = probe.wait_status("mambavla/controller_node", lambda s: s["state"] == "IDLE", "connected (IDLE)")
        assert status["robot_ip"] == task["robot_ip"]
        # the installed policy_node imports torch and the model from the venv (tiny preset on torch: a quick load)
        policy = start("policy_node", ["policy.yaml", "policy_sim.yaml"], preset="tiny", backend="torch",
                       diagnostics_rate_hz=5.0)
        probe.wait_status("mambavla/policy_node", lambda s: s["state"] == "WAITING", "the installed policy loaded",
                          timeout=300.0)
        for process, name in ((policy, "policy_node"), (controller, "controller_node")):
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=15.0) == 0, name
            log = (tmp_path / f"{name}.log").read_text()
            assert "Traceback" not in log, log[-2000:]
        assert "UNTRAINED preset 'tiny'" in (tmp_path / "policy_node.log").read_text()
    finally:
        for process, _ in reversed(started):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=15.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        probe.close()
