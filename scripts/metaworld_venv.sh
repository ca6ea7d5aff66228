#!/usr/bin/env bash
# Make .venv-metaworld: Meta-World 3.1.1 with its pinned mujoco 3.3.0 (requirements-metaworld.lock) in front of
# the project's .venv, which it sees through a .pth file (torch, the package, OpenCV ... installed once). Its
# interpreter imports mujoco 3.3.0; .venv's own interpreter keeps 4.0.0 for franky-sim. Idempotent: re-runs
# only when the lock or .venv changed. Usage: bash scripts/metaworld_venv.sh [VENV] (default .venv-metaworld).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(realpath -m "${1:-.venv-metaworld}")
base=.venv
stamp=$venv/.setup-stamp
[ -x $base/bin/python ] || { echo "metaworld_venv: $base is missing; run make setup first" >&2; exit 1; }
fresh() { [ -f "$stamp" ] && [ "$stamp" -nt requirements-metaworld.lock ] && [ "$stamp" -nt $base/.setup-stamp ]; }
fresh && exit 0
# made again from scratch: a .venv made since may run another Python, whose packages this one could not load
[ ! -e "$venv" ] || [ -f "$venv/pyvenv.cfg" ] || { echo "metaworld_venv: $venv is not a venv" >&2; exit 1; }
rm -rf "$venv"
"$($base/bin/python -c "import sys; print(sys._base_executable)")" -m venv "$venv"
"$venv/bin/python" -m pip install -q --no-deps -r requirements-metaworld.lock
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
base_site=$($base/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# addsitedir runs .venv's own .pth files too (the editable install of this package); appended after this
# venv's packages, so mujoco 3.3.0 shadows .venv's 4.0.0
echo "import site; site.addsitedir('$base_site')" > "$site/zz_project_venv.pth"
cat > "$venv/bin/mambavla" <<SH
#!/usr/bin/env bash
exec "$venv/bin/python" -m mambavla.cli "\$@"
SH
chmod +x "$venv/bin/mambavla"
"$venv/bin/python" -c "import mujoco, metaworld, torch, mambavla; assert mujoco.__version__ == '3.3.0'"
touch "$stamp"
echo "metaworld_venv: $venv ready (metaworld 3.1.1, mujoco 3.3.0; the project's packages from $base)"
