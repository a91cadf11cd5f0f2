"""Passage and query embeddings: mean-pooled last hidden states of a transformers model, L2-normalised so that
a dot product is the cosine similarity. The one module of retrieval that loads torch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModel

from fine_tune_dag.core.models.loading import load_tokenizer, select_device

MAX_TOKENS = 512  # passages are a few hundred characters; the cap only bounds memory on a pathological one


class Encoder:
    """Any encoder or decoder checkpoint; float32, so passages embedded in different builds compare exactly."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 16) -> None:
        self.device = select_device(device)
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(model)
        self.model = AutoModel.from_pretrained(model, dtype=torch.float32).to(self.device).eval()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length row per text; padding is masked out of the mean."""
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            ).to(self.device)
            # only ids and mask: decoder models reject the token_type_ids some tokenizers add
            hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
