#!/usr/bin/env bash
# Fill a folder with what a GPU machine (Python 3.12, torch, OpenCV, no network) needs to run the Meta-World
# suite, small enough to travel with the working tree (64 MiB in all): the packages of requirements-metaworld.lock
# for cp312 that it lacks, PyOpenGL (MuJoCo's EGL binding), and metaworld without the 24 MB of textures that no
# model file of it references. There: bash scripts/metaworld_device_wheels.sh --install DIR puts them on
# PYTHONPATH=/tmp/mwsite (print that export). Usage here: bash scripts/metaworld_device_wheels.sh DIR
set -euo pipefail
if [ "${1:-}" = "--install" ]; then
    dir=${2:?usage: metaworld_device_wheels.sh --install DIR}
    mkdir -p /tmp/mwsite
    for w in "$dir"/*.whl; do python3 -m zipfile -e "$w" /tmp/mwsite; done
    tar xzf "$dir"/metaworld-trimmed.tar.gz -C /tmp/mwsite
    exit 0
fi
out=${1:?usage: metaworld_device_wheels.sh OUT_DIR}
mkdir -p "$out"
pip_download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$out" "$@"
}
lock() { grep -E "^$1==" "$(dirname "$0")/../requirements-metaworld.lock"; }
pip_download "$(lock mujoco)" "$(lock gymnasium)" "$(lock farama-notifications)" pyopengl==3.1.10 glfw==2.11.0
tmp=$(mktemp -d)
pip_download -d "$tmp" "$(lock metaworld)"
(cd "$tmp" && python3 -m zipfile -e metaworld-*.whl pkg)
python3 - "$tmp/pkg" <<'PY'
import os, re, sys
from pathlib import Path

root = Path(sys.argv[1]) / "metaworld" / "assets"
referenced = set()
for xml in root.rglob("*.xml"):
    referenced.update(Path(m).name for m in re.findall(r'file="([^"]+)"', xml.read_text(errors="ignore")))
for f in [f for f in root.rglob("*") if f.is_file() and f.suffix != ".xml" and f.name not in referenced]:
    f.unlink()
PY
tar czf "$out/metaworld-trimmed.tar.gz" -C "$tmp/pkg" metaworld
rm -rf "$tmp"
du -sh "$out"
