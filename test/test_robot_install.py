"""The robot-PC install (scripts/install_robot_pc.sh), docker/Dockerfile and package.xml agree with each other and
with what the code imports. Docker cannot run here, so the image is checked by reading: it installs through the
script, which takes its Python packages from requirements.lock (one source of truth)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install_robot_pc.sh"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
# top-level modules of the apt ROS install (rclpy, messages, services): package.xml's business, not pip's
ROS_MODULES = {"rclpy", "rcl_interfaces", "builtin_interfaces", "std_msgs", "std_srvs", "sensor_msgs", "geometry_msgs",
               "trajectory_msgs", "diagnostic_msgs", "rosgraph_msgs"}
# imported only on CUDA, from the GPU packages the script adds (mamba-ssm; triton comes with CUDA torch)
NOT_FROM_THE_LOCK = {"mamba_ssm", "triton"}
# the Meta-World tools run in their own environment (requirements-metaworld.lock, scripts/metaworld_venv.sh)
OWN_ENVIRONMENT = ROOT / "src" / "mambavla" / "sim" / "metaworld"
# modules whose distribution the robot PC installs under another name than this venv's metadata says
ROBOT_DISTRIBUTION = {"onnxruntime": "onnxruntime-gpu",  # the GPU build provides the same module
                      "pinocchio": "pin"}  # cmeel installs it beside site-packages, outside its top-level index


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[normalized(name)] = version.strip()
    return pins


@pytest.fixture(scope="module")
def robot_requirements() -> dict[str, str]:
    out = subprocess.run(["bash", str(SCRIPT), "--print-requirements"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pins = {}
    for line in out.stdout.split():
        name, version = line.split("==")
        assert normalized(name) not in pins, f"{name} listed twice"
        pins[normalized(name)] = version
    return pins


def imported_modules() -> set[str]:
    """Top-level modules imported in src/mambavla (outside the Meta-World tools) that are neither the standard
    library nor mambavla."""
    modules = set()
    for path in (ROOT / "src" / "mambavla").rglob("*.py"):
        if OWN_ENVIRONMENT in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in ("mambavla", "__future__")}


def test_the_robot_pc_takes_the_lock_without_the_ros_wheels_and_with_gpu_builds(robot_requirements):
    pins = lock_pins()
    assert not [name for name in robot_requirements if name.startswith("ros-")]
    assert "onnxruntime" not in robot_requirements  # the CPU build: onnxruntime-gpu replaces it
    assert robot_requirements["torch"] == pins["torch"]  # same version, the CUDA build (from TORCH_INDEX or PyPI)
    assert "onnxruntime-gpu" in robot_requirements and "mamba-ssm" in robot_requirements
    kept = {name: version for name, version in pins.items() if not name.startswith("ros-") and name != "onnxruntime"}
    for name, version in kept.items():
        assert robot_requirements.get(name) == version, f"{name}=={version} from the lock is missing on a robot PC"
    for needed in ("numpy", "matplotlib", "scipy", "h5py", "onnx", "tensorboard", "opencv-python-headless",
                   "franky-control", "franky-sim", "colcon-core", "colcon-ros", "colcon-bash"):
        assert needed in robot_requirements, needed


def test_every_module_the_code_imports_is_installed_on_a_robot_pc(robot_requirements):
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(imported_modules() - ROS_MODULES - NOT_FROM_THE_LOCK):
        names = {normalized(d) for d in distributions.get(module, [])}
        names = {ROBOT_DISTRIBUTION[module]} if module in ROBOT_DISTRIBUTION else names
        if not names & set(robot_requirements):
            missing.append(f"{module} ({', '.join(sorted(names)) or 'no distribution installed here'})")
    assert not missing, f"imported by src/mambavla but not installed by {SCRIPT.name}: {missing}"


def test_the_script_checks_the_shebang_of_every_console_script_setup_py_installs():
    setup = ast.parse((ROOT / "setup.py").read_text())
    entries = next(ast.literal_eval(k.value)["console_scripts"] for k in ast.walk(setup)
                   if isinstance(k, ast.keyword) and k.arg == "entry_points")
    installed = {entry.split("=")[0].strip() for entry in entries}
    checked = re.search(r"^for script in ([^;]+); do$", SCRIPT.read_text(), re.M).group(1).split()
    assert sorted(checked) == sorted(installed), "a node script the install does not check could start /usr/bin/python3"


def test_package_xml_names_every_ros_package_the_code_imports_and_the_script_installs_them():
    depends = {e.text for e in ET.parse(ROOT / "package.xml").getroot().iter("exec_depend")}
    assert not (imported_modules() & ROS_MODULES) - depends
    assert ROS_MODULES <= depends
    assert {"launch", "launch_ros", "ros2launch", "rmw_fastrtps_cpp"} <= depends  # launch files, the DDS profile
    for key in ("python3-numpy", "python3-yaml", "python3-scipy", "python3-matplotlib", "python3-opencv"):
        assert key in depends
    assert "python3-torch" not in depends  # Debian's torch has no CUDA
    text = SCRIPT.read_text()
    shell = f"SOURCE={ROOT}; {extract_function(text, 'apt_ros_packages')}; apt_ros_packages jazzy"
    apt = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=30, check=True)
    ros = {f"ros-jazzy-{d.replace('_', '-')}" for d in depends if not d.startswith("python3")}
    assert sorted(apt.stdout.split()) == sorted(ros) and "ros-jazzy-rclpy" in ros


def extract_function(script: str, name: str) -> str:
    start = script.index(f"{name}() {{")
    return script[start:script.index("\n}\n", start) + 2]


def run_script_function(name: str, **variables: str) -> subprocess.CompletedProcess:
    """One function of the install script, run in bash with `variables` set (its die() exits 1)."""
    assigned = "; ".join(f"{key}={shlex.quote(value)}" for key, value in variables.items())
    shell = (f"set -euo pipefail; die() {{ echo \"$*\" >&2; exit 1; }}; {assigned}; "
             f"{extract_function(SCRIPT.read_text(), name)}; {name}")
    return subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)


def test_the_script_links_this_checkout_into_the_workspace_and_refuses_another(tmp_path):
    ws = tmp_path / "ws"
    for _ in range(2):  # a second run finds its own link
        done = run_script_function("link_source", SOURCE=str(ROOT), WS=str(ws))
        assert done.returncode == 0, done.stderr
        assert (ws / "src" / "mambavla").resolve() == ROOT.resolve()
    other = tmp_path / "other_checkout"
    other.mkdir()
    (tmp_path / "ws2" / "src").mkdir(parents=True)
    (tmp_path / "ws2" / "src" / "mambavla").symlink_to(other)
    done = run_script_function("link_source", SOURCE=str(ROOT), WS=str(tmp_path / "ws2"))
    assert done.returncode == 1 and "not this checkout" in done.stderr and "MAMBAVLA_WS" in done.stderr, done.stderr


def test_the_script_makes_again_a_venv_an_earlier_run_left_without_pip(tmp_path):
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)  # python3-venv missing
    assert subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True).returncode
    done = run_script_function("make_venv", VENV=str(venv), python=base)
    assert done.returncode == 0, done.stderr
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()


def dockerfile_run_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [line.strip() for line in text.splitlines() if line.strip()]


def dockerfile_copied() -> set[str]:
    """The sources of the Dockerfile's COPY instructions, as written."""
    copies = [line.split()[1:-1] for line in dockerfile_run_lines() if line.startswith("COPY ")]
    return {source for sources in copies for source in sources}


def test_the_dockerfile_copies_every_file_setup_py_installs(monkeypatch):
    # glob() in setup.py finds nothing in a folder the image lacks, so colcon would build without it: a launch file
    # or config missing only at run time
    import runpy

    import setuptools

    arguments = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: arguments.update(kwargs))
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"))
    sources = {Path(f).parts[0] for _, files in arguments["data_files"] for f in files}
    sources |= set(arguments["package_dir"].values())
    assert {"launch", "config", "src", "package.xml"} <= sources
    missing = sources - dockerfile_copied()
    assert not missing, f"setup.py installs from what the image does not copy: {missing}"


def test_the_dockerfile_installs_through_the_script_and_pins_nothing_itself():
    instructions = dockerfile_run_lines()
    runs = [line for line in instructions if line.startswith("RUN ")]
    assert any("bash scripts/install_robot_pc.sh" in line for line in runs)
    assert not [line for line in runs if "pip " in line or "==" in line], "the Dockerfile pins packages of its own"
    copied = dockerfile_copied()
    assert {"requirements.lock", "package.xml", "scripts/install_robot_pc.sh"} <= copied
    allowed = {line[1:].rstrip("/") for line in (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert copied <= allowed, f"COPY names files the build context leaves out: {copied - allowed}"
    env = " ".join(line for line in instructions if line.startswith("ENV "))
    script = SCRIPT.read_text()
    for variable in ("MAMBAVLA_VENV", "MAMBAVLA_WS"):
        assert f"${{{variable}:-" in script, f"the script does not read {variable}"
    venv = re.search(r"MAMBAVLA_VENV=(\S+)", env).group(1)
    ws = re.search(r"MAMBAVLA_WS=(\S+)", env).group(1)
    assert f"PATH={venv}/bin:" in env
    profile = re.search(r"FASTDDS_DEFAULT_PROFILES_FILE=(\S+)", env).group(1)
    assert profile == f"{ws}/install/mambavla/share/mambavla/config/fastdds.xml"
    assert (ROOT / "config" / "fastdds.xml").is_file()
    assert "WORKDIR /ws/src/mambavla" in instructions and ws == "/ws"  # the source where the script's workspace has it


def test_the_dockerfile_run_line_shares_the_hosts_network_ipc_and_realtime_limits():
    text = DOCKERFILE.read_text()
    run = re.search(r"#\s+docker run (.*?)ros2 launch", text, re.S).group(1)
    for flag in ("--gpus all", "--network host", "--ipc host", "--cap-add SYS_NICE", "--ulimit rtprio=99"):
        assert flag in run, f"the docker run line lacks {flag}"
    assert "cv_bridge" in text and "numpy 2" in text  # why apt's cv_bridge is not used in the venv
    assert "STOPSIGNAL SIGINT" in text
