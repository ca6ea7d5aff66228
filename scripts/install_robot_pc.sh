#!/usr/bin/env bash
# Install mambavla on a robot PC: Ubuntu 24.04 with ROS 2 Jazzy or Kilted from apt and an NVIDIA GPU.
#
#   bash scripts/install_robot_pc.sh                   # venv in ~/mambavla/venv, colcon workspace in ~/mambavla/ws
#   MAMBAVLA_VENV=/opt/venv MAMBAVLA_WS=/ws bash scripts/install_robot_pc.sh
#   bash scripts/install_robot_pc.sh --print-requirements   # the pip list derived from requirements.lock, nothing else
#
# What it does (docs/robot.md explains each choice):
# 1. apt: the ROS packages package.xml names (ros-<distro>-*), python3-venv and the GL libraries MuJoCo renders with.
# 2. A virtualenv made with --system-site-packages: rclpy and the messages come from /opt/ros (PYTHONPATH, set by
#    sourcing setup.bash), the Python packages apt ROS depends on (launch's lark and osrf_pycommon, ...) from the
#    system, and the pinned packages sit in front of the system's for mambavla's processes only. Installing into
#    the system Python would need --break-system-packages and put numpy 2 in front of every apt ROS node on the PC
#    (apt's cv_bridge does not import under numpy 2).
# 3. pip: requirements.lock (one source of truth) without the PyPI ROS 2 wheels (the robot's apt ROS serves rclpy
#    and the messages) and without the CPU-only pins; then PyTorch's CUDA build of the
#    lock's torch version, onnxruntime-gpu, and mamba-ssm for its Triton SSD kernels (no CUDA compile).
# 4. colcon, run by the venv's python (`python -m colcon build`), so the node scripts start the venv's interpreter;
#    the script checks that they do (a plain `colcon build` writes /usr/bin/python3, which has no torch or franky).
#
# Environment: ROS_DISTRO (default: the one under /opt/ros), MAMBAVLA_VENV, MAMBAVLA_WS, TORCH_INDEX (a PyTorch
# wheel index such as https://download.pytorch.org/whl/cu128; default PyPI, whose Linux wheel is a CUDA build),
# MAMBAVLA_SKIP_APT=1 (the ROS packages are installed already, e.g. by the Dockerfile's base image).
set -euo pipefail

SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCK="$SOURCE/requirements.lock"
VENV="${MAMBAVLA_VENV:-$HOME/mambavla/venv}"
WS="${MAMBAVLA_WS:-$HOME/mambavla/ws}"
TORCH_INDEX="${TORCH_INDEX:-}"
# GPU builds that replace the lock's CPU pins; torch keeps the lock's version
ONNXRUNTIME_GPU="onnxruntime-gpu==1.31.1"
MAMBA_SSM="mamba-ssm==2.3.2.post1"
# Lock entries a robot PC does not take from PyPI: the ROS 2 wheels (ros-*; apt ROS serves rclpy and the
# messages), and the CPU builds replaced above.
NOT_FROM_LOCK_RE='^(ros-[a-z0-9-]+|torch|onnxruntime)=='

say() { printf '\033[1minstall_robot_pc: %s\033[0m\n' "$*"; }
die() { printf 'install_robot_pc: %s\n' "$*" >&2; exit 1; }

lock_requirements() {
    grep -E '^[A-Za-z0-9_.-]+==' "$LOCK" | grep -Ev "$NOT_FROM_LOCK_RE"
}

torch_requirement() {
    grep -E '^torch==' "$LOCK" || die "requirements.lock pins no torch"
}

# ROS packages (apt: ros-<distro>-<name>) from package.xml's exec_depend entries; python3-* keys are rosdep's
apt_ros_packages() {
    sed -n 's:.*<exec_depend>\([a-z0-9_]*\)</exec_depend>.*:\1:p' "$SOURCE/package.xml" | grep -v '^python3' \
        | tr '_' '-' | sed "s/^/ros-$1-/"
}

# The venv, with a pip that runs: made, or made again in place over one an earlier run left half-made (python3-venv
# missing: bin/python there, no pip)
make_venv() {
    "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || $python -m venv --system-site-packages "$VENV"
}

# The workspace's src/mambavla: this checkout (a link made here), never another checkout found there
link_source() {
    mkdir -p "$WS/src"
    [ -e "$WS/src/mambavla" ] || ln -s "$SOURCE" "$WS/src/mambavla"
    [ "$(realpath "$WS/src/mambavla")" = "$(realpath "$SOURCE")" ] || die "$WS/src/mambavla is \
$(realpath "$WS/src/mambavla"), not this checkout ($SOURCE): colcon would build that one. Remove it, or set \
MAMBAVLA_WS to another workspace, and run this again"
}

if [ "${1:-}" = "--print-requirements" ]; then
    lock_requirements
    torch_requirement
    echo "$ONNXRUNTIME_GPU"
    echo "$MAMBA_SSM"
    exit 0
elif [ -n "${1:-}" ]; then
    die "unknown argument $1 (usage: $0 [--print-requirements])"
fi

if [ -z "${ROS_DISTRO:-}" ]; then
    for distro in kilted jazzy; do
        [ -f "/opt/ros/$distro/setup.bash" ] && ROS_DISTRO=$distro && break
    done
fi
case "${ROS_DISTRO:-}" in
    jazzy|kilted) ;;
    "") die "no ROS 2 under /opt/ros: install ROS 2 Jazzy or Kilted from apt first (docs.ros.org, Ubuntu debs)" ;;
    *) die "ROS_DISTRO=$ROS_DISTRO is not supported: use Jazzy or Kilted (Ubuntu 24.04, Python 3.12)" ;;
esac
[ -f "/opt/ros/$ROS_DISTRO/setup.bash" ] \
    || die "/opt/ros/$ROS_DISTRO/setup.bash is missing: apt install ros-$ROS_DISTRO-ros-base"

SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
if [ "${MAMBAVLA_SKIP_APT:-0}" != 1 ]; then
    say "apt: ROS 2 $ROS_DISTRO packages from package.xml, python3-venv, GL libraries"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2046
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $(apt_ros_packages "$ROS_DISTRO") python3-venv libegl1 libgl1 libosmesa6
fi

# The apt ROS Python path must be visible when the venv is created and used.
set +u
# shellcheck disable=SC1090
source "/opt/ros/$ROS_DISTRO/setup.bash"
set -u
python=/usr/bin/python3
case "$($python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" in
    3.11|3.12) ;;
    *) die "$python is not Python 3.11 or 3.12: ROS 2 $ROS_DISTRO from apt on Ubuntu 24.04 runs Python 3.12" ;;
esac

say "virtualenv $VENV (--system-site-packages: apt ROS's Python dependencies stay visible)"
make_venv
"$VENV/bin/python" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' || die "$VENV is not a virtualenv"
grep -q 'include-system-site-packages = true' "$VENV/pyvenv.cfg" \
    || die "$VENV was made without --system-site-packages (ros2 launch's Python dependencies would be missing): \
remove it and run this again"
pip=("$VENV/bin/python" -m pip install --quiet)
"${pip[@]}" pip==26.3

say "PyTorch $(torch_requirement | cut -d= -f3) with CUDA${TORCH_INDEX:+ from $TORCH_INDEX}"
"${pip[@]}" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$(torch_requirement)"
say "requirements.lock without the ROS 2 wheels and CPU-only pins, then $ONNXRUNTIME_GPU"
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
{ lock_requirements; torch_requirement; echo "$ONNXRUNTIME_GPU"; } > "$requirements"
"${pip[@]}" -r "$requirements"
say "$MAMBA_SSM (Triton SSD kernels; its CUDA extension is not built: mambavla does not use Mamba-1's scan)"
MAMBA_SKIP_CUDA_BUILD=TRUE "${pip[@]}" --no-build-isolation --no-deps "$MAMBA_SSM"

say "colcon workspace $WS, built by the venv's python"
link_source
(cd "$WS" && "$VENV/bin/python" -m colcon build --base-paths src --event-handlers console_cohesion+)

say "checking the installed node scripts start $VENV/bin/python"
for script in controller_node policy_node sim_node recorder_node mambavla; do
    path="$WS/install/mambavla/lib/mambavla/$script"
    [ -x "$path" ] || die "$path was not installed"
    shebang=$(head -1 "$path")
    [ "$shebang" = "#!$VENV/bin/python" ] || die "$path starts '$shebang', not '#!$VENV/bin/python': the nodes would \
run without torch and franky. Run colcon as '$VENV/bin/python -m colcon build', not /usr/bin/colcon"
done

say "checking the venv sees apt's rclpy, its own torch, and the installed package"
set +u
# shellcheck disable=SC1091
source "$WS/install/setup.bash"
set -u
"$VENV/bin/python" - <<'PY'
import franky, mambavla, numpy, rclpy, torch  # noqa: F401
print(f"rclpy from {rclpy.__file__}\nmambavla from {mambavla.__file__}\nnumpy {numpy.__version__}, "
      f"torch {torch.__version__} (CUDA {'available' if torch.cuda.is_available() else 'NOT available'})")
PY

cat <<EOF

Installed. In every shell that runs mambavla:
    source /opt/ros/$ROS_DISTRO/setup.bash && source $WS/install/setup.bash
Check the PC:   mambavla doctor --robot-ip 172.16.0.2 --checkpoint /path/to/checkpoint
Simulator:      ros2 launch mambavla sim.launch.py
Real arm:       ros2 launch mambavla robot.launch.py robot_ip:=172.16.0.2 checkpoint:=/path/to/checkpoint
(docs/robot.md: the kernel, FCI, and the values to set for your cell first)
EOF
