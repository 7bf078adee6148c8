"""Anomaly: a score from the model, or the reconstruction error of an autoencoder, against a threshold."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from edge_agent.errors import DataError
from edge_agent.processing.postprocess import BasePostprocessor, PostContext, PostprocessOptions
from edge_agent.processing.quantization import dequantize


class AnomalyOptions(PostprocessOptions):
    threshold: float = Field(
        description="Scores above this are anomalies (e.g. a high percentile of normal data)."
    )


@dataclass(frozen=True)
class AnomalyResult:
    anomaly_score: float
    threshold: float

    @property
    def is_anomaly(self) -> bool:
        return self.anomaly_score > self.threshold

    @property
    def label(self) -> str:
        return "anomaly" if self.is_anomaly else "normal"

    @property
    def score(self) -> float:
        return self.anomaly_score

    def to_fields(self) -> dict[str, Any]:
        return {
            "anomaly_score": self.anomaly_score,
            "threshold": self.threshold,
            "is_anomaly": self.is_anomaly,
        }


class AnomalyPostprocessor(BasePostprocessor):
    Options = AnomalyOptions
    name = "anomaly"

    def __init__(self, manifest: Any, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(manifest, options)
        self.output = self.first_spec("anomaly_score", "reconstruction")
        self.input_quant = manifest.inputs[0].quantization

    def __call__(self, outputs: Mapping[str, np.ndarray], ctx: PostContext | None = None) -> AnomalyResult:
        if self.output.role == "anomaly_score":
            score = float(self.real(outputs, "anomaly_score").reshape(-1)[0])
        else:
            if ctx is None or ctx.model_input is None:
                raise DataError(
                    "anomaly: a reconstruction model needs the model input in PostContext.model_input"
                )
            original = dequantize(ctx.model_input, self.input_quant).astype(np.float64).reshape(-1)
            rebuilt = self.real(outputs, "reconstruction").astype(np.float64).reshape(-1)
            if original.size != rebuilt.size:
                raise DataError(f"anomaly: input has {original.size} values, reconstruction {rebuilt.size}")
            score = float(np.mean((original - rebuilt) ** 2))
        return AnomalyResult(anomaly_score=score, threshold=self.options.threshold)
