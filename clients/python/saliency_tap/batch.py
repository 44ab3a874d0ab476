"""The result of one saliency computation (no torch needed to hold or publish it)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TARGET_PREDICTED = 0
TARGET_TRUE = 1


@dataclass
class SaliencyBatch:
    """One batch of predictions. `saliency` is float32 [B, K] in global filter order."""
    saliency: np.ndarray
    predicted: np.ndarray      # int64 [B], -1 where the task has no class prediction
    target: np.ndarray         # int64 [B], the label used for the loss (-1 if not a class index)
    target_kind: int           # TARGET_TRUE if targets were given, else TARGET_PREDICTED
    confidence: np.ndarray     # float32 [B], softmax max (NaN where there is none)

    def __len__(self) -> int:
        return self.saliency.shape[0]
