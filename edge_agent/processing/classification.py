"""Classification: probabilities or logits -> top-k labels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from edge_agent.processing.postprocess import BasePostprocessor, PostContext, PostprocessOptions


class ClassificationOptions(PostprocessOptions):
    top_k: int = Field(default=5, ge=1, description="How many classes to report, best first.")
    threshold: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Classes scoring below this are not reported."
    )
    softmax: bool | None = Field(
        default=None, description="Apply softmax; default: only when the output's role is 'logits'."
    )


@dataclass(frozen=True)
class ClassScore:
    label: str
    class_id: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "class_id": self.class_id, "score": self.score}


@dataclass(frozen=True)
class ClassificationResult:
    label: str | None  # None when no class reaches the threshold
    score: float | None  # the best score (even when below the threshold)
    class_id: int | None
    top_k: tuple[ClassScore, ...]

    def to_fields(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "class_id": self.class_id,
            "score": self.score,
            "top_k": [c.to_dict() for c in self.top_k],
        }


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = np.exp(z - z.max())  # shifting by the max keeps exp() from overflowing
    return z / z.sum()


class ClassificationPostprocessor(BasePostprocessor):
    Options = ClassificationOptions
    name = "classification"

    def __init__(self, manifest: Any, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(manifest, options)
        self.output = self.first_spec("probabilities", "logits")
        self.apply_softmax = (
            self.options.softmax if self.options.softmax is not None else self.output.role == "logits"
        )

    def __call__(
        self, outputs: Mapping[str, np.ndarray], ctx: PostContext | None = None
    ) -> ClassificationResult:
        scores = self.real(outputs, self.output.role).reshape(-1).astype(np.float64)
        if scores.size == 1:  # a single sigmoid/logit unit: binary classifier, class 1 = positive
            p = 1.0 / (1.0 + np.exp(-scores[0])) if self.output.role == "logits" else float(scores[0])
            scores = np.array([1.0 - p, p])
        elif self.apply_softmax:
            scores = softmax(scores)
        k = min(self.options.top_k, scores.size)
        # A full stable sort, not argpartition: int8 outputs tie often, and argpartition picks among equal
        # scores differently on x86 and aarch64 numpy builds. Ties go to the lowest class id everywhere.
        best = np.argsort(-scores, kind="stable")[:k]
        top = tuple(
            ClassScore(self.label_for(int(i)), int(i), float(scores[i]))
            for i in best
            if scores[i] >= self.options.threshold
        )
        winner = top[0] if top else None
        return ClassificationResult(
            label=winner.label if winner else None,
            score=float(scores[best[0]]),
            class_id=winner.class_id if winner else None,
            top_k=top,
        )
