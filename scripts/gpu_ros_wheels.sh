#!/usr/bin/env bash
# The ROS 2 wheels (rclpy, Fast DDS, the message packages, as pinned in requirements.lock) and OpenCV for the
# GPU machine's Python, so the nodes run there (`mambavla bench-ros --device cuda`). That machine has no
# network and a different Python (3.12 on the H100 machines), so fetch them here, on a networked machine:
#   bash scripts/gpu_ros_wheels.sh OUT [PYTHON_VERSION]     -> OUT/ros (45 MB), OUT/opencv (61 MB)
# OUT/opencv's one wheel is over what one call can carry beside the tree: send it in parts
# (`split -b 30M`, `cat` them back there). There: MAMBAVLA_GPU_WHEELS="DIR ..." bash scripts/gpu_setup.sh.
# empy and lark-parser are left out: rosidl's code generators need them, the nodes do not.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_ros_wheels.sh OUT [PYTHON_VERSION]}
python_version=${2:-3.12}
get() {  # DIR REQUIREMENT...
    local dir=$1; shift
    python -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$dir" "$@"
}
mkdir -p "$out/ros" "$out/opencv"
get "$out/ros" $(grep -iE '^(ros-|pyyaml==)' requirements.lock)
get "$out/opencv" $(grep -i '^opencv-python-headless==' requirements.lock)
du -sh "$out/ros" "$out/opencv"
