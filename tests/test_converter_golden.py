"""converter/golden.py: the byte budget decides how many golden samples a manifest carries."""

from __future__ import annotations

import base64

import numpy as np

from converter.golden import golden_samples
from converter.litert import LiteModel
from tests.fixtures.tflite_models import TinyModel


def test_budget_keeps_fewer_samples_or_none_with_a_note(color_int8: TinyModel) -> None:
    lite = LiteModel(color_int8.path)
    x = np.random.default_rng(0).random((10, 32, 32, 3), dtype=np.float32)
    golden, note = golden_samples(lite, x)
    assert golden is not None and note is None and len(golden["samples"]) == 4
    raw = base64.b64decode(golden["samples"][0]["input"])
    assert len(raw) == 32 * 32 * 3  # int8: the quantized input tensor's own bytes
    one = len(golden["samples"][0]["input"])
    golden, note = golden_samples(lite, x, budget=2 * one + 500)
    assert golden is not None and len(golden["samples"]) == 2
    assert note == "2 of 4 golden samples kept (manifest budget 8 KiB)" and golden["note"] == note
    golden, note = golden_samples(lite, x, budget=one // 2)
    assert golden is None and note is not None and note.startswith("no golden samples: one takes")
