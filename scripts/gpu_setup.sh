#!/usr/bin/env bash
# Set up training on a GPU machine that has PyTorch (CUDA) but no network: install what travels in
# .whl/ (mamba-ssm's source package for its Triton SSD kernels, einops; optionally tensorboard & co.)
# and this package, without touching the machine's torch. Fill .whl/ on a networked machine first:
#   MAMBA_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-build-isolation mamba-ssm==2.3.2.post1 -d .whl
#   pip download --no-deps einops==0.8.2 -d .whl
#   pip download --no-deps pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0 -d .whl   (CUDA tests)
# Then: bash scripts/gpu_setup.sh && mambavla train --data PACK --out RUN --device cuda
# The ROS nodes there (bench-ros --device cuda) also need ROS 2's wheels: see scripts/gpu_ros_wheels.sh.
# Presets, benchmarks and the CUDA tests also need the "minilm" encoder: carry the fp16 copy that
# scripts/gpu_minilm.sh writes (45 MB, in its own call) and set MAMBAVLA_MINILM_PATH to it, e.g.
#   MAMBAVLA_MINILM_PATH=/tmp/minilm python -m pytest -q -m cuda test/test_runtime.py test/test_model_mamba2.py
set -euo pipefail
shopt -s nullglob  # a folder without wheels installs nothing
cd "$(dirname "$0")/.."
PIP="python -m pip install -q --no-index --no-deps --find-links .whl"
einops=(.whl/einops-*.whl) && (( ${#einops[@]} )) && $PIP einops
# only mamba-ssm's Triton SSD kernels are used (pure Python + Triton): unpack its source next to the
# interpreter's packages and point a .pth file at it; building it would compile CUDA extensions
mamba=(.whl/mamba_ssm-*.tar.gz)
if (( ${#mamba[@]} )); then
    deps="${MAMBAVLA_GPU_DEPS:-$HOME/.cache/mambavla-gpu-deps}"
    mkdir -p "$deps" && tar xzf "${mamba[0]}" -C "$deps"
    site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    ls -d "$deps"/mamba_ssm-*/ | head -1 > "$site/mamba_ssm_source.pth"
fi
for wheel in .whl/*.whl; do case "$wheel" in *einops*) ;; *) $PIP "$wheel" ;; esac; done  # tensorboard & co. if carried
# more folders of wheels, e.g. the ROS 2 wheels and OpenCV that scripts/gpu_ros_wheels.sh fetches (for the nodes)
for dir in ${MAMBAVLA_GPU_WHEELS:-}; do
    wheels=("$dir"/*.whl)
    (( ${#wheels[@]} )) || { echo "gpu_setup: MAMBAVLA_GPU_WHEELS names $dir, which holds no .whl files" >&2; exit 1; }
    $PIP "${wheels[@]}"
done
# this package from the work tree (a .pth file, as an editable install would add; no build step)
site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$PWD/src" > "$site/mambavla_source.pth"
python - <<'PY'
import torch
from mambavla.model.mamba2 import ssd_kernels
print(f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}, mamba-ssm Triton kernels {'yes' if ssd_kernels() else 'NO (PyTorch scan)'}")
PY
