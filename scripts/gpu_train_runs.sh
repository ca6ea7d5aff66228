#!/usr/bin/env bash
# Start the policy comparison runs on one GPU machine, all runs at once (each is launch-bound, so
# they share the GPU well), each in its own session so it outlives the shell that started it. Memory bounds
# how many: a base run at batch 16 x 64 frames holds up to about 26 GB, so two fit an 80 GB H100 with room
# and five at once run out of memory (docs/training.md#time-boxes-and-memory). The runs:
#   A mamba_stream     the shipped configuration: Mamba fusion, stream mode, every training episode
#   (mamba_stream_nofilm  as A without the instruction's FiLM in the vision encoder; only when named)
#   (mamba_stream_g05     as A with --grounding-weight 0.5 instead of 0.1; only when named)
#   (mamba_stream_s2      as mamba_stream_g05 with a 2-pixel random image shift instead of 6; only when named)
#   (mamba_stream_bal     as mamba_stream_g05 with --balance-tasks (each task an equal share of every batch); only when named)
#   (mamba_stream_ft      mamba_stream_g05's settings, fine-tuned from checkpoint $INIT (default: the shipped
#                         policy) for FT_STEPS steps (default 900) at a lower peak rate; only when named)
#   B mamba_window     Mamba fusion, window mode (one frame per sample)
#   C transformer_window  the Transformer fusion trained the same way as B (stream training needs Mamba)
#   D mamba_stream_25  as A on the first 25 episodes of each task
#   E mamba_stream_10  as A on the first 10 episodes of each task
# The same comparison on the shipped recipe (mamba_stream_bal: grounding weight 0.5, task-balanced batches),
# named, not default (the lettered runs above keep the earlier recipe: grounding weight 0.1, unbalanced):
#   mamba_window_g05 / transformer_window_g05   B and C with --grounding-weight 0.5 (window mode has no
#                                               --balance-tasks: it samples frames, not episodes)
#   mamba_stream_bal_50 / _25 / _10             mamba_stream_bal on the first 50, 25, 10 episodes of each task
# Fine-tuning as a user runs it (train --init with the product's fine-tuning defaults: peak rate 1e-4, a fifth
# of the run as warmup), named, not default; for a pack from another cell (docs/own-data.md#fine-tuning-measured (the cells and the commands)):
#   finetune_10 / _25 / _50   the checkpoint $INIT (default: the shipped policy) on the first 10, 25, 50 episodes
#                             of each task, FT_STEPS steps (default 800)
#   finetune_depth_10 / _25 / _50   the same with --depth (an RGB-D policy from the RGB checkpoint; a pack made
#                             with `dataset pack --depth`)
# COMPARE_STEPS=N sets the stream runs' schedule for 50 per task (25: 4/5 of it, 10: 2/3; default 1250).
# All validate on the same held-out episodes (every 10th of each task). Usage:
#   bash scripts/gpu_train_runs.sh PACK RUNS_DIR SECONDS [NAME ...]   (after scripts/gpu_setup.sh; default: the five lettered)
# STREAM_STEPS=N sets mamba_stream's schedule length (default 1500), for a run continued with --resume.
# Then: tail RUNS_DIR/*.log; bash scripts/gpu_ship_runs.sh RUNS_DIR OUT waits for them and packs each
# run's best/ in bf16 with its summary, loss plot and log as OUT/<name>.tar.
set -euo pipefail
pack=$1 runs=$2 seconds=${3:-2000}
shift 3 || shift $#
wanted=" ${*:-mamba_stream mamba_window transformer_window mamba_stream_25 mamba_stream_10} "  # nofilm, g05, s2, bal, ft: name them
mkdir -p "$runs"
train() {  # name, extra arguments
    local name=$1; shift
    [[ $wanted == *" $name "* ]] || return 0
    setsid nohup python -m mambavla.cli train --data "$pack" --out "$runs/$name" --preset base --device cuda \
        --max-seconds "$seconds" "$@" > "$runs/$name.log" 2>&1 < /dev/null &
    echo $! > "$runs/$name.pid"  # scripts/gpu_ship_runs.sh waits on these (pgrep -f would match its own shell)
}
train mamba_stream --steps "${STREAM_STEPS:-1500}" --batch-size 16 --segment-frames 64
train mamba_stream_nofilm --no-vision-film --steps "${STREAM_STEPS:-1500}" --batch-size 16 --segment-frames 64
train mamba_stream_g05 --grounding-weight 0.5 --steps "${STREAM_STEPS:-1500}" --batch-size 16 --segment-frames 64
train mamba_stream_s2 --grounding-weight 0.5 --shift-px 2 --steps "${STREAM_STEPS:-1500}" --batch-size 16 --segment-frames 64
bal=(--grounding-weight 0.5 --balance-tasks --batch-size 16 --segment-frames 64)  # the shipped recipe
train mamba_stream_bal "${bal[@]}" --steps "${STREAM_STEPS:-1500}"
train mamba_stream_ft --init "${INIT:-src/mambavla/policies/base_sim}" --grounding-weight 0.5 --steps "${FT_STEPS:-900}" \
    --warmup 50 --lr 1.5e-4 --batch-size 16 --segment-frames 64
train mamba_window --history window --history-frames 1 --steps 1500 --batch-size 512
train transformer_window --fusion transformer --history window --history-frames 1 --steps 1200 --batch-size 512
for n in 10 25 50; do
    train finetune_$n --init "${INIT:-src/mambavla/policies/base_sim}" --episodes-per-task $n --steps "${FT_STEPS:-800}" \
        --batch-size 16 --segment-frames 64
    train finetune_depth_$n --init "${INIT:-src/mambavla/policies/base_sim}" --depth --episodes-per-task $n \
        --steps "${FT_STEPS:-800}" --batch-size 16 --segment-frames 64
done
compare_steps=${COMPARE_STEPS:-1250}
train mamba_window_g05 --grounding-weight 0.5 --history window --history-frames 1 --steps 1500 --batch-size 512
train transformer_window_g05 --grounding-weight 0.5 --fusion transformer --history window --history-frames 1 --steps 1200 --batch-size 512
train mamba_stream_bal_50 "${bal[@]}" --episodes-per-task 50 --steps "$compare_steps"
train mamba_stream_bal_25 "${bal[@]}" --episodes-per-task 25 --steps $((compare_steps * 4 / 5))
train mamba_stream_bal_10 "${bal[@]}" --episodes-per-task 10 --steps $((compare_steps * 2 / 3))
train mamba_stream_25 --episodes-per-task 25 --steps 1500 --batch-size 16 --segment-frames 64
train mamba_stream_10 --episodes-per-task 10 --steps 1000 --batch-size 16 --segment-frames 64
sleep 2
echo "started: $(ls "$runs"/*.log | xargs -n1 basename | tr '\n' ' ')"
