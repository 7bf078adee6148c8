"""Regression: output values -> named values with units."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from edge_agent.errors import ModelError
from edge_agent.processing.postprocess import BasePostprocessor, PostContext, PostprocessOptions


class RegressionOptions(PostprocessOptions):
    names: list[str] | None = Field(
        default=None, description="One name per output value; default value_0, ..."
    )
    units: list[str] | dict[str, str] | None = Field(
        default=None, description="Unit per value: a list parallel to names, or name -> unit."
    )

    @model_validator(mode="after")
    def _units_match(self) -> RegressionOptions:
        if isinstance(self.units, list) and self.names is not None and len(self.units) != len(self.names):
            raise ValueError(f"units has {len(self.units)} entries, names has {len(self.names)}")
        if isinstance(self.units, dict) and self.names is not None:
            unknown = sorted(set(self.units) - set(self.names))
            if unknown:
                raise ValueError(f"units names {unknown} are not in names")
        return self


@dataclass(frozen=True)
class RegressionResult:
    values: Mapping[str, float]
    units: Mapping[str, str] = field(default_factory=dict)
    label: str | None = None
    score: float | None = None

    def to_fields(self) -> dict[str, Any]:
        return {"values": dict(self.values), "units": dict(self.units)}


class RegressionPostprocessor(BasePostprocessor):
    Options = RegressionOptions
    name = "regression"

    def __init__(self, manifest: Any, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(manifest, options)
        spec = self.spec("values")
        size = int(np.prod(spec.shape[1:])) if len(spec.shape) > 1 else int(np.prod(spec.shape))
        names = self.options.names or [f"value_{i}" for i in range(size)]
        if len(names) != size:
            raise ModelError(
                f"postprocess.names: {len(names)} names for {size} output values of model '{manifest.name}'"
            )
        self.names = names
        units = self.options.units
        if isinstance(units, list):
            if len(units) != size:
                raise ModelError(f"postprocess.units: {len(units)} units for {size} output values")
            self.units = dict(zip(names, units, strict=True))
        else:
            self.units = dict(units or {})

    def __call__(self, outputs: Mapping[str, np.ndarray], ctx: PostContext | None = None) -> RegressionResult:
        values = self.real(outputs, "values").reshape(-1)
        return RegressionResult(
            values={n: float(v) for n, v in zip(self.names, values, strict=True)}, units=dict(self.units)
        )
