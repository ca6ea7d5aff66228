"""`mambavla doctor`: checks a robot PC (or this machine) and says what is wrong and how to fix it.

Each check ends ok, warn or fail with one line of detail and, unless ok, one sentence that names the fix. The exit
status is 1 when any check fails. Checks of the arm's real-time setup (kernel, rtprio and memlock limits) warn on a
development machine and fail once --robot-ip says this PC drives an arm.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "fail"
LIBFRANKA_COMMAND_PORT = 1337  # libfranka's TCP port on the arm (FCI)
FRANKA_RTPRIO = 99  # Franka's real-time setup: `@realtime - rtprio 99`
FRANKA_MEMLOCK = 102400 * 1024  # and `@realtime - memlock 102400` (kB)
# capabilities that let root pass the limits: real-time priorities, locked memory (containers drop both by default)
CAP_IPC_LOCK, CAP_SYS_NICE = 14, 23
SUPPORTED_PYTHON = ((3, 11), (3, 12))
INSTALL_SCRIPT = Path("scripts") / "install_robot_pc.sh"
DEFAULT_VENV = Path.home() / "mambavla" / "venv"  # the install script's MAMBAVLA_VENV default


def install_script() -> str:
    """The robot-PC install as a command to paste: the script's absolute path when a source checkout is found (this
    package's own tree, or the colcon workspace's src/mambavla next to its install space), with MAMBAVLA_VENV when
    this interpreter's venv is not the script's default one."""
    here = Path(__file__).resolve()
    found = next((c for p in here.parents for c in (p / INSTALL_SCRIPT, p / "src" / "mambavla" / INSTALL_SCRIPT)
                  if c.is_file()), None)
    script = f"bash {found}" if found else f"bash {INSTALL_SCRIPT} (in the mambavla source checkout)"
    venv = Path(sys.prefix)
    if sys.prefix != sys.base_prefix and venv.resolve() != DEFAULT_VENV.resolve() and not development_venv():
        script = f"MAMBAVLA_VENV={venv} {script}"
    return script


def development_venv() -> bool:
    """The development venv of `make setup`: ROS 2 from PyPI wheels, CPU torch by design."""
    import importlib.util

    return importlib.util.find_spec("ros_wheels_bootstrapper") is not None


INSTALL = install_script()


def on_the_robot_pc(fix: str) -> str:
    """`fix` as it applies here, or, in the development venv (CPU-only by design), on the robot PC."""
    if development_venv():
        return f"this is the development venv (make setup), CPU-only by design; on the robot PC: {fix}"
    return fix


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("doctor", help="check a robot PC: GPU, ROS, DDS, real-time setup, robot, cameras, "
                                             "checkpoint; says how to fix what is wrong")
    p.add_argument("--robot-ip", help="FCI address of the arm: checks it accepts a TCP connection on libfranka's port "
                                      "(no handshake), and makes the real-time checks failures rather than warnings")
    p.add_argument("--checkpoint", help="checkpoint folder: checks it loads and its cameras match --camera")
    p.add_argument("--camera", action="append", default=[], metavar="NAME=TOPIC",
                   help="a camera as robot.launch.py's cameras:= names it (repeat per camera): its topic is checked "
                        "for frames, its name against the checkpoint's; TOPIC may end in /compressed")
    p.add_argument("--listen", type=float, default=3.0, help="seconds to listen to each camera topic")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the robot's TCP connect")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cameras = parse_cameras(args.camera)
    robot = bool(args.robot_ip)
    checks = [check_python(), check_torch(), check_mamba_kernels(), check_onnxruntime(), check_franky(),
              check_ros(), check_dds_profile(), check_realtime_kernel(robot), check_rt_limits(robot)]
    if args.robot_ip:
        checks.append(check_robot(args.robot_ip, args.timeout))
    if cameras:
        from mambavla.runtime.policy_config import depth_topic_of, takes_depth

        # a depth checkpoint: each camera's aligned depth too, where policy_node would subscribe to it (check_checkpoint
        # reports a folder whose config does not read)
        depth = {f"{name} depth": depth_topic_of(topic) for name, topic in cameras.items()} \
            if takes_depth(args.checkpoint or "") else {}
        checks.extend(check_cameras({**cameras, **depth}, args.listen))
    if args.checkpoint:
        checks.append(check_checkpoint(args.checkpoint, cameras))
    failed = any(c.status == FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
            if c.fix:
                print(f"      {'':<{width}}  fix: {c.fix}")
        print(f"\n{sum(c.status == FAIL for c in checks)} failed, {sum(c.status == WARN for c in checks)} warnings")
    return 1 if failed else 0


def parse_cameras(items: list[str]) -> dict[str, str]:
    """NAME=TOPIC items -> {name: topic}, in order; a bare NAME gets robot.launch.py's default topic."""
    cameras: dict[str, str] = {}
    for item in items:
        name, _, topic = (part.strip() for part in item.partition("="))
        if not name:
            raise ValueError(f"--camera {item!r}: give NAME=TOPIC, e.g. --camera front=/cam_a/color/image_raw")
        if name in cameras:
            raise ValueError(f"--camera names {name!r} twice: one --camera per checkpoint camera")
        cameras[name] = topic or f"/cameras/{name}/image_raw"
    return cameras


def check_python() -> Check:
    version = sys.version_info[:2]
    try:
        import numpy
    except ImportError:
        return Check("python", FAIL, f"Python {platform.python_version()}, no numpy",
                     f"run mambavla from its venv ({INSTALL})")
    detail = f"Python {platform.python_version()} ({sys.executable}), numpy {numpy.__version__}"
    if version not in SUPPORTED_PYTHON:
        return Check("python", FAIL, detail, "use Python 3.11 or 3.12 (Ubuntu 24.04's python3 is 3.12)")
    if sys.prefix == sys.base_prefix:
        return Check("python", WARN, detail + ", not in a virtualenv",
                     f"run mambavla from its virtualenv ({INSTALL} makes one over apt ROS)")
    return Check("python", OK, detail)


def check_torch() -> Check:
    try:
        import torch
    except ImportError as err:
        return Check("torch", FAIL, f"cannot import torch: {err}", f"install the CUDA build of torch: {INSTALL}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Check("torch", OK, f"torch {torch.__version__}, CUDA {torch.version.cuda}, {props.name} "
                                  f"({props.total_memory / 2**30:.0f} GiB)")
    if torch.version.cuda is None:
        return Check("torch", FAIL, f"torch {torch.__version__} is the CPU build: policy_node device cuda cannot run",
                     on_the_robot_pc(f"install the CUDA build: {INSTALL} (for an NVIDIA driver older than 580 prefix "
                                     "it with TORCH_INDEX=https://download.pytorch.org/whl/cu128), or run the policy "
                                     "with device:=cpu (simulation only)"))
    return Check("torch", FAIL, f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU",
                 "check the NVIDIA driver (nvidia-smi); in Docker run with --gpus all")


def check_mamba_kernels() -> Check:
    import importlib.util

    if importlib.util.find_spec("mamba_ssm") is None:
        return Check("mamba-ssm", WARN, "mamba-ssm is not installed: the PyTorch scan runs (slower on a GPU)",
                     on_the_robot_pc(f"install mamba-ssm for its Triton SSD kernels: {INSTALL}"))
    from mambavla.model.mamba2 import ssd_kernels

    try:
        kernels = ssd_kernels()
    except Exception as err:  # an incompatible triton or torch
        return Check("mamba-ssm", FAIL, f"mamba-ssm's Triton kernels do not import: {err}",
                     f"reinstall with the lock's torch ({INSTALL})")
    if kernels is None:
        return Check("mamba-ssm", WARN, "mamba-ssm is installed but there is no CUDA device: the PyTorch scan runs",
                     "its kernels need a GPU: see the torch check")
    return Check("mamba-ssm", OK, "Triton SSD kernels (mamba_chunk_scan_combined, selective_state_update)")


def check_onnxruntime() -> Check:
    try:
        import onnxruntime
    except ImportError:
        return Check("onnxruntime", WARN, "not installed: policy_node backend onnx and `mambavla export` cannot run",
                     f"install onnxruntime-gpu ({INSTALL})")
    providers = onnxruntime.get_available_providers()
    detail = f"onnxruntime {onnxruntime.__version__}: {', '.join(providers)}"
    if "CUDAExecutionProvider" not in providers:
        return Check("onnxruntime", WARN, detail + " (backend onnx runs on the CPU)",
                     on_the_robot_pc("for the CUDA provider replace onnxruntime with onnxruntime-gpu: "
                                     f"{sys.executable} -m pip uninstall -y onnxruntime, then {INSTALL}"))
    return Check("onnxruntime", OK, detail)


def check_franky() -> Check:
    try:
        import franky
    except ImportError as err:
        return Check("franky", FAIL, f"cannot import franky: {err}",
                     f"install franky-control from requirements.lock ({INSTALL}) and run mambavla from that venv")
    from importlib.metadata import PackageNotFoundError, version

    try:
        detail = f"franky-control {version('franky-control')}"
    except PackageNotFoundError:
        detail = f"franky from {Path(franky.__file__).parent}"
    return Check("franky", OK, detail)


def check_ros() -> Check:
    try:
        import rclpy
        from rclpy.utilities import get_rmw_implementation_identifier
    except ImportError as err:
        return Check("ros", FAIL, f"cannot import rclpy: {err}",
                     "source /opt/ros/<distro>/setup.bash (it puts apt's rclpy on PYTHONPATH) before running "
                     "mambavla")
    origin = Path(rclpy.__file__).resolve()
    source = "apt" if str(origin).startswith("/opt/ros/") else "PyPI wheels"
    distro = os.environ.get("ROS_DISTRO", "")
    if not distro and source == "PyPI wheels":
        from importlib.metadata import PackageNotFoundError, version

        try:
            distro = f"(rclpy {version('ros-rclpy')})"
        except PackageNotFoundError:
            pass
    rmw = get_rmw_implementation_identifier()
    detail = f"ROS 2 {distro or '(ROS_DISTRO unset)'}, rclpy from {source} ({origin.parent}), RMW {rmw}"
    if source == "apt" and distro not in ("jazzy", "kilted"):
        return Check("ros", WARN, detail, "Jazzy and Kilted are supported: source /opt/ros/jazzy/setup.bash")
    if rmw != "rmw_fastrtps_cpp":
        return Check("ros", WARN, detail, "config/fastdds.xml (large camera frames) configures Fast DDS only: set "
                                          "RMW_IMPLEMENTATION=rmw_fastrtps_cpp, or size your middleware's shm")
    return Check("ros", OK, detail)


def check_dds_profile() -> Check:
    import xml.etree.ElementTree as ET

    from mambavla.control.config import config_path

    chosen = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
    try:
        profile = Path(chosen) if chosen else config_path("fastdds.xml")
        root = ET.parse(profile).getroot()
        sizes = [int(e.text) for e in root.iter() if e.tag.endswith("segment_size") and e.text]
    except (OSError, ET.ParseError, ValueError) as err:  # ValueError: a segment size that is not a number
        if chosen:
            try:
                ours = f" (mambavla's: {config_path('fastdds.xml')})"
            except FileNotFoundError:
                ours = ""
            return Check("dds profile", FAIL, f"FASTDDS_DEFAULT_PROFILES_FILE={chosen} cannot be read: {err}",
                         f"point FASTDDS_DEFAULT_PROFILES_FILE at a readable profile{ours}, or unset it: the nodes "
                         "then load mambavla's")
        return Check("dds profile", FAIL, f"no readable Fast DDS profile: {err}",
                     "reinstall the package (config/fastdds.xml is installed to share/mambavla/config)")
    segment = max(sizes) if sizes else 0
    shm = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
    free = shm.f_bavail * shm.f_frsize if shm else 0
    detail = (f"{profile} ({'FASTDDS_DEFAULT_PROFILES_FILE' if chosen else 'the nodes load it'}), shared-memory "
              f"segment {segment >> 20} MB, /dev/shm {free >> 20} MB free")
    if segment < 4 << 20:
        return Check("dds profile", WARN, detail, "frames over 512 kB need a large shared-memory segment: use "
                                                  "config/fastdds.xml (unset FASTDDS_DEFAULT_PROFILES_FILE)")
    if free < 4 * segment:  # each participant's segment, for the nodes and the camera drivers
        return Check("dds profile", FAIL, detail, "enlarge /dev/shm (Docker: --ipc host, or --shm-size 1g)")
    fix = "" if chosen else ("start camera drivers with FASTDDS_DEFAULT_PROFILES_FILE=" + str(profile) +
                             " too: the publisher's segment carries the frames")
    return Check("dds profile", OK if chosen else WARN, detail, fix)


def check_realtime_kernel(robot: bool) -> Check:
    release, version = os.uname().release, os.uname().version
    try:
        realtime = Path("/sys/kernel/realtime").read_text().strip() == "1"
    except OSError:
        realtime = "PREEMPT_RT" in version
    if realtime:
        return Check("realtime kernel", OK, f"PREEMPT_RT ({release})")
    return Check("realtime kernel", FAIL if robot else WARN,
                 f"{release} is not PREEMPT_RT: franky refuses the arm with realtime:=true",
                 "boot a PREEMPT_RT kernel (Ubuntu 24.04: `sudo pro enable realtime-kernel`; docs/robot.md); "
                 "realtime:=false is for bench tests only")


def check_rt_limits(robot: bool) -> Check:
    rtprio = resource.getrlimit(resource.RLIMIT_RTPRIO)[0]
    memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    unlimited = resource.RLIM_INFINITY
    memlock_text = "unlimited" if memlock == unlimited else f"{memlock // 1024} kB"
    detail = f"rtprio {'unlimited' if rtprio == unlimited else rtprio}, memlock {memlock_text}"
    low = [what for what, value, need in (("rtprio", rtprio, FRANKA_RTPRIO), ("memlock", memlock, FRANKA_MEMLOCK))
           if value != unlimited and value < need]
    if os.geteuid() == 0:
        # root passes a limit with the capability that overrides it; the container flags that grant it or the limit
        overrides = {"rtprio": (CAP_SYS_NICE, "CAP_SYS_NICE", "--cap-add SYS_NICE --ulimit rtprio=99"),
                     "memlock": (CAP_IPC_LOCK, "CAP_IPC_LOCK", "--ulimit memlock=-1")}
        short = [what for what in low if not has_capability(overrides[what][0])]
        if not short:
            return Check("rt limits", OK, detail + (" (root: its capabilities pass the limits)" if low else ""))
        return Check("rt limits", FAIL if robot else WARN,
                     f"{detail}: {' and '.join(short)} too low for root without "
                     f"{' and '.join(overrides[w][1] for w in short)} (a container?)",
                     f"run the container with {' '.join(overrides[w][2] for w in short)}")
    if not low:
        return Check("rt limits", OK, detail)
    files = [Path("/etc/security/limits.conf"), *sorted(Path("/etc/security/limits.d").glob("*.conf"))]
    configured = [p for p in files if sets_rtprio(p)]
    fix = ("log out and in again: " + ", ".join(map(str, configured)) + " sets rtprio (for a group: check your user "
           "is in it with `groups`)" if configured else
           "add `@realtime - rtprio 99` and `@realtime - memlock 102400` to /etc/security/limits.conf, "
           "`sudo groupadd realtime; sudo usermod -aG realtime $USER`, then log in again")
    return Check("rt limits", FAIL if robot else WARN, f"{detail}: {' and '.join(low)} too low", fix)


def sets_rtprio(path: Path) -> bool:
    """Whether a limits.conf-style file has an rtprio entry (`<domain> <type> rtprio <value>`); the stock
    /etc/security/limits.conf names rtprio only in its comments."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return False
    return any(len(fields) >= 4 and fields[2] == "rtprio" for fields in (line.split("#")[0].split() for line in lines))


def has_capability(bit: int) -> bool:
    """Whether this process holds a Linux capability (its effective set in /proc/self/status)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return True  # not Linux: nothing to tell
    effective = next((line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), "0")
    return bool(int(effective, 16) >> bit & 1)


def check_robot(address: str, timeout: float) -> Check:
    name = "robot"
    started = time.monotonic()
    try:
        with socket.create_connection((address, LIBFRANKA_COMMAND_PORT), timeout=timeout):
            pass
    except ConnectionRefusedError:
        return Check(name, FAIL, f"{address}:{LIBFRANKA_COMMAND_PORT} refuses the connection",
                     "activate FCI in Desk (menu > Activate FCI, brakes open), and check robot_ip is the arm's")
    except (TimeoutError, socket.timeout):
        return Check(name, FAIL, f"no answer from {address}:{LIBFRANKA_COMMAND_PORT} within {timeout} s",
                     "check the cable to the arm's control box and this PC's address on that network "
                     f"(ping {address}; the arm's default is 172.16.0.2)")
    except OSError as err:
        return Check(name, FAIL, f"cannot reach {address}: {err}",
                     f"check this PC has a route to {address} (ip addr; the arm's network)")
    # a TCP connect only: no libfranka handshake, so neither the FCI version nor the arm's state is checked here
    return Check(name, OK, f"{address}:{LIBFRANKA_COMMAND_PORT} accepts TCP connections in "
                           f"{(time.monotonic() - started) * 1e3:.0f} ms (a TCP connect only: libfranka's handshake, "
                           "its version and the arm's state come when controller_node connects)")


def check_cameras(cameras: dict[str, str], listen: float) -> list[Check]:
    """Listen to every camera topic for `listen` s on a node of its own ROS context: frames, size, rate."""
    try:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import CompressedImage, Image

        from mambavla.ros.qos import SENSOR_QOS
    except ImportError as err:  # ROS not sourced: the ros check names the fix; the other checks still report
        return [Check(f"camera {name}", FAIL, f"cannot listen to {topic}: {err}", "see the ros check")
                for name, topic in cameras.items()]

    context = rclpy.Context()
    rclpy.init(context=context)
    # per camera: [frames, first arrival, last arrival, last message] (the frames themselves are not kept)
    received: dict[str, list] = {name: [0, 0.0, 0.0, None] for name in cameras}

    def on_frame(name: str, msg) -> None:
        seen, now = received[name], time.monotonic()
        seen[:] = [seen[0] + 1, seen[1] if seen[0] else now, now, msg]

    try:
        node = rclpy.create_node("mambavla_doctor", context=context)
        for name, topic in cameras.items():
            kind = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
            node.create_subscription(kind, topic, lambda msg, n=name: on_frame(n, msg), SENSOR_QOS)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        end = time.monotonic() + listen
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    checks = []
    for name, topic in cameras.items():
        frames, first, latest, last = received[name]
        if not frames:
            checks.append(Check(f"camera {name}", FAIL, f"no frames on {topic} in {listen:.0f} s",
                                "start the camera driver (same ROS_DOMAIN_ID; FASTDDS_DEFAULT_PROFILES_FILE set to "
                                "mambavla's config/fastdds.xml for frames over 512 kB), or give the topic it "
                                f"publishes (ros2 topic list -t): --camera {name}=TOPIC"))
            continue
        size = (f"{last.width}x{last.height} {last.encoding}" if isinstance(last, Image)
                else f"{last.format}, {len(last.data)} bytes")
        rate = (frames - 1) / (latest - first) if frames > 1 and latest > first else 0.0
        detail = f"{topic}: {frames} frames in {listen:.0f} s ({rate:.1f} Hz), {size}"
        checks.append(Check(f"camera {name}", OK if frames > 1 else WARN, detail,
                            "" if frames > 1 else "one frame only: check the driver's rate"))
    return checks


def check_checkpoint(path: str, cameras: dict[str, str]) -> Check:
    try:
        from mambavla.model.checkpoint import load_checkpoint
    except ImportError as err:  # no torch: the torch check names the fix; the other checks still report
        return Check("checkpoint", FAIL, f"cannot load {path}: {err}", "see the torch check")
    try:
        model = load_checkpoint(path, device="cpu")
    except Exception as err:  # missing files, a config of another version, weights that do not fit
        return Check("checkpoint", FAIL, f"{path} does not load: {type(err).__name__}: {err}",
                     "give a folder written by `mambavla train` (config, weights, normalization stats)")
    names = list(model.config.cameras)
    wanted = list(cameras) or ["front", "wrist"]  # robot.launch.py's default cameras:=front,wrist
    detail = f"{path}: {model.config.name}, cameras {names}{' with depth' if model.config.use_depth else ''}"
    if sorted(names) != sorted(wanted):
        return Check("checkpoint", FAIL, f"{detail}; the launch would feed {wanted}",
                     f"launch with cameras:={','.join(names)} (one <name>_camera:=TOPIC each), naming the "
                     "checkpoint's cameras")
    return Check("checkpoint", OK, detail + (" matched to " + ", ".join(f"{n} <- {cameras[n]}" for n in names)
                                             if cameras else ""))
