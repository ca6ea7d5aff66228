#!/usr/bin/env bash
# Check DDP training on a machine with two or more GPUs (after scripts/gpu_setup.sh): the same stream-mode
# run on one GPU and, through torchrun, on two; a time-boxed two-GPU run (every rank must stop at the same
# step); and --resume of a two-GPU run. Prints each run's summary line. Usage:
#   bash scripts/gpu_ddp_check.sh PACK WORK [STEPS]   (default 100 steps; base preset, the shipped recipe)
set -euo pipefail
pack=$1 work=$2 steps=${3:-100}
recipe=(--data "$pack" --preset base --device cuda --batch-size 16 --segment-frames 64 --grounding-weight 0.5
        --balance-tasks --val-every 50 --json)
ddp=(torchrun --standalone --nproc-per-node 2 -m mambavla.cli train)
summary() {  # the numbers that judge a run: world size, steps, speed, losses
    python - "$1/train_summary.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
keys = ("world_size", "steps", "steps_planned", "seconds", "steps_per_second", "loss_first", "loss_last", "val_loss_best")
print("   ", ", ".join(f"{k} {d.get(k)}" for k in keys))
PY
}
run() {  # title, run folder, log, command...: run it, then its summary (or the log's end if it failed)
    local title=$1 folder=$2 log=$3; shift 3
    echo "$title"
    "$@" > "$log" 2>&1 || { echo "    FAILED (exit $?):"; tail -20 "$log"; return 1; }
    summary "$folder"
}
mkdir -p "$work"
run "one GPU, $steps steps" "$work/one" "$work/one.log" python -m mambavla.cli train "${recipe[@]}" --out "$work/one" --steps "$steps"
run "two GPUs, $steps steps" "$work/two" "$work/two.log" "${ddp[@]}" "${recipe[@]}" --out "$work/two" --steps "$steps"
run "two GPUs, time box 40 s" "$work/box" "$work/box.log" "${ddp[@]}" "${recipe[@]}" --out "$work/box" --steps 100000 --max-seconds 40
run "two GPUs, --resume to $((steps + 50))" "$work/two" "$work/resume.log" "${ddp[@]}" --resume "$work/two" --steps $((steps + 50)) --json
