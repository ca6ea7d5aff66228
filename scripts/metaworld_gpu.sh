#!/usr/bin/env bash
# Meta-World on a GPU machine without network, in one go: install what DEPS carries, generate the expert
# demonstrations of all 50 tasks, train a policy on them, evaluate it on all 50 tasks (10 episodes each).
# DEPS (made here): DEPS/dev from scripts/metaworld_device_wheels.sh, DEPS/mamba/mamba_ssm-*.tar.gz (its Triton
# SSD kernels), DEPS/instructions.npz from scripts/metaworld_instructions.py. Results go to OUT: collect.json,
# train.json, loss.png, eval.json, success.png, gifs.tgz.part-*; the pack and the run stay under WORK.
# Usage: bash scripts/metaworld_gpu.sh DEPS OUT [WORK]; settings from the environment (defaults below). A second
# run on the same machine skips the demonstrations it finds, resumes the run (TRAIN_SECONDS=0: no training), EVAL=0
# stops before the evaluation.
set -euo pipefail
deps=${1:?usage: metaworld_gpu.sh DEPS OUT [WORK]}
out=${2:?usage: metaworld_gpu.sh DEPS OUT [WORK]}
work=${3:-/tmp/metaworld}
EPISODES=${EPISODES:-50}            # demonstrations per task
PRESET=${PRESET:-base}
STEPS=${STEPS:-20000}               # the schedule's length; TRAIN_SECONDS stops it earlier (resume goes on)
TRAIN_SECONDS=${TRAIN_SECONDS:-240}
BATCH=${BATCH:-64}
SEGMENT=${SEGMENT:-32}              # policy frames per stream segment (demonstrations average 19.5: collect.json)
EVAL_EPISODES=${EVAL_EPISODES:-10}
WORKERS=${WORKERS:-$(nproc)}
mkdir -p "$out" "$work"
bash "$(dirname "$0")/metaworld_device_wheels.sh" --install "$deps/dev"
mkdir -p /tmp/deps && tar xzf "$deps"/mamba/mamba_ssm-*.tar.gz -C /tmp/deps
PYTHONPATH="$PWD/src:/tmp/mwsite:$(ls -d /tmp/deps/mamba_ssm-*/ | head -1)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH MUJOCO_GL=egl PYTHONUNBUFFERED=1
mw() { python3 -m mambavla.cli "$@"; }
stamp() { echo "[$(date +%T)] $*" >&2; }
if [ ! -f "$work/pack/pack.json" ]; then
    stamp "collect: $EPISODES demonstrations x 50 tasks, $WORKERS processes"
    mw collect --suite metaworld --tasks all --episodes "$EPISODES" --out "$work/pack" --workers "$WORKERS" \
        --instructions "$deps/instructions.npz" --json > "$out/collect.json"
fi
if [ "$TRAIN_SECONDS" = 0 ]; then
    stamp "train: skipped (TRAIN_SECONDS=0)"
elif [ ! -f "$work/run/last/trainer_state.pt" ]; then
    stamp "train: $PRESET, batch $BATCH x $SEGMENT frames, at most $TRAIN_SECONDS s"
    mw train --suite metaworld --data "$work/pack" --out "$work/run" --preset "$PRESET" --device cuda --steps "$STEPS" \
        --batch-size "$BATCH" --segment-frames "$SEGMENT" --max-seconds "$TRAIN_SECONDS" --val-every 500 --json \
        > "$out/train.json"
else
    stamp "train: resume for at most $TRAIN_SECONDS s"
    mw train --resume "$work/run" --max-seconds "$TRAIN_SECONDS" --json > "$out/train.json"
fi
cp "$work/run/loss.png" "$out/" 2>/dev/null || true
[ "${EVAL:-1}" = 1 ] || { stamp "eval: skipped (EVAL=0)"; exit 0; }
stamp "eval: $EVAL_EPISODES episodes x 50 tasks, $WORKERS processes"
mw eval-sim --suite metaworld --checkpoint "$work/run/last" --instructions "$deps/instructions.npz" --device cuda \
    --episodes "$EVAL_EPISODES" --workers "$WORKERS" --out "$work/eval" --json > "$out/eval.json"
cp "$work/eval/success.png" "$out/"
# in parts under 15 MB, as files come back from a GPU call (at most 16 MiB each): cat gifs.tgz.part-* | tar xz
tar czf - -C "$work/eval" gifs | split -b 15M - "$out/gifs.tgz.part-"
stamp "done"
