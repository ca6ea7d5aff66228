#!/usr/bin/env bash
# Wait for the runs that scripts/gpu_train_runs.sh started (by their PID files), then pack each run's
# best/ checkpoint (its last/ when it stopped before its first validation) with bf16 weights (mambavla export --bf16: no model is built, so the language encoder
# need not be there), run.json, train_summary.json, loss.png and the log into OUT/<name>.tar (~13 MB for
# base), small enough to bring back from a machine without network. Usage:
#   bash scripts/gpu_ship_runs.sh RUNS_DIR OUT [MAX_WAIT_SECONDS]   (default wait: 600 s; then ships what is there)
# SHIP_LAST=1 also packs last/ (the newest EMA weights; best/ is only the lowest validation loss so far) as
# OUT/<name>_last.tar: a separate file, since one tar with both (27 MB for base) can exceed the size a transfer
# from the machine allows.
set -uo pipefail
shopt -s nullglob  # a runs folder without PID files (runs started by hand) waits for nothing
runs=$1 out=$2 deadline=$((SECONDS + ${3:-600}))
for pid in "$runs"/*.pid; do
    while kill -0 "$(cat "$pid")" 2>/dev/null && ((SECONDS < deadline)); do sleep 5; done
done
mkdir -p "$out"
stage=$(mktemp -d)
for log in "$runs"/*.log; do
    name=$(basename "$log" .log) run="$runs/$(basename "$log" .log)"
    ckpt=best
    if [[ ! -f $run/best/model.safetensors ]]; then  # stopped before its first validation: its last/ is all there is
        [[ -f $run/last/model.safetensors ]] || { echo "$name: no checkpoint yet"; continue; }
        ckpt=last && echo "$name: no best/ (stopped before its first validation); shipping last/"
    fi
    python -m mambavla.cli export --bf16 "$stage/$name/$ckpt" --checkpoint "$run/$ckpt" > /dev/null || { echo "$name: bf16 export of $run/$ckpt failed"; continue; }
    if [[ ${SHIP_LAST:-0} == 1 && $ckpt == best && -f $run/last/model.safetensors ]]; then  # the latest EMA weights too, in their own tar
        python -m mambavla.cli export --bf16 "$stage/${name}_last/last" --checkpoint "$run/last" > /dev/null \
            && tar cf "$out/${name}_last.tar" -C "$stage/${name}_last" last || echo "$name: bf16 export of $run/last failed"
    fi
    cp "$log" "$stage/$name/train.log"
    for f in run.json train_summary.json loss.png; do [[ -f $run/$f ]] && cp "$run/$f" "$stage/$name/"; done
    tar cf "$out/$name.tar" -C "$stage" "$name" && echo "$name: $(du -h "$out/$name.tar" | cut -f1) $(tr '\r' '\n' < "$log" | grep -a 'train:' | tail -1)"
    [[ -f $run/train_summary.json ]] && python - "$run/train_summary.json" <<'PY'  # the numbers that judge a run
import json, sys
d = json.load(open(sys.argv[1]))
keys = ("steps", "val_loss_best", "val_other_cube_gap_last", "val_grounding_error_m_last", "val_grounding_error_first_frame_m_last")
print("   ", ", ".join(f"{k} {d.get(k)}" for k in keys))
PY
done
rm -rf "$stage"
