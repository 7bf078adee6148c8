"""Post-training quantization over ``tf.lite.TFLiteConverter``: one function per mode.

int8 and int16x8 are full-integer modes calibrated on representative samples; dynamic quantizes the
weights only; float16 halves the weights; float32 is the unquantized reference (its size is the
baseline the converter reports the quantized size against).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, Literal, TextIO, get_args

import click
import numpy as np

from converter.loading import FloatModel
from converter.quiet import captured_fds, import_tensorflow
from edge_agent.errors import ConfigError, ModelError
from edge_agent.manifest import Mode

IoType = Literal["int8", "uint8", "int16", "float32"]
MODES: tuple[str, ...] = get_args(Mode)  # the manifest's list of modes: defined once, there
NEEDS_CALIBRATION = {"int8", "int16x8"}
# Ops of a model that still reads resource variables (weights not frozen): see _reads_variables.
VARIABLE_OPS = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}
# Input/output types each mode can have; the first is the default.
IO_TYPES: dict[str, tuple[str, ...]] = {
    "int8": ("int8", "uint8", "float32"),
    "int16x8": ("int16", "float32"),
    "float16": ("float32",),
    "dynamic": ("float32",),
    "float32": ("float32",),
}


def resolve_io_type(mode: str, io_type: str | None) -> str:
    """The I/O type for ``mode``: the user's choice when the mode allows it, else a ConfigError."""
    allowed = IO_TYPES[mode]
    if io_type is None:
        return allowed[0]
    if mode == "int16x8" and io_type == "int8":  # "integer I/O" for the 16-bit mode means int16
        return "int16"
    if io_type not in allowed:
        raise ConfigError(
            f"--io {io_type} is not possible with --mode {mode}; choose one of: {', '.join(allowed)}"
        )
    return io_type


def _converter_factories(tf: Any, model: FloatModel) -> list[Callable[[], Any]]:
    """Ways to build a converter for ``model``, tried in order.

    A SavedModel goes through ``from_saved_model`` first (the only path for Keras 2 SavedModels); some
    SavedModels written by ``tf.saved_model.save`` keep resource variables that calibration cannot read
    there, and convert through their serving function instead."""
    if model.keras_model is not None:
        return [lambda: tf.lite.TFLiteConverter.from_keras_model(model.batch_of_one())]
    return [
        lambda: tf.lite.TFLiteConverter.from_saved_model(str(model.path)),
        lambda: tf.lite.TFLiteConverter.from_concrete_functions([model.signature], model.saved_model),
    ]


def _representative(samples: np.ndarray, progress: TextIO | None) -> Callable[[], Iterator[list[np.ndarray]]]:
    def dataset() -> Iterator[list[np.ndarray]]:
        with click.progressbar(samples, label="Calibrating", file=progress, show_pos=True) as bar:
            for sample in bar:
                yield [np.asarray(sample, dtype=np.float32)[None]]

    return dataset


def _setup_float32(
    tf: Any, conv: Any, io_type: str, samples: np.ndarray | None, progress: TextIO | None
) -> None:
    """No optimization: the float reference."""


def _setup_float16(
    tf: Any, conv: Any, io_type: str, samples: np.ndarray | None, progress: TextIO | None
) -> None:
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]


def _setup_dynamic(
    tf: Any, conv: Any, io_type: str, samples: np.ndarray | None, progress: TextIO | None
) -> None:
    conv.optimizations = [tf.lite.Optimize.DEFAULT]


def _setup_int8(
    tf: Any, conv: Any, io_type: str, samples: np.ndarray | None, progress: TextIO | None
) -> None:
    assert samples is not None
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _representative(samples, progress)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = getattr(tf, io_type)
    conv.inference_output_type = getattr(tf, io_type)


def _setup_int16x8(
    tf: Any, conv: Any, io_type: str, samples: np.ndarray | None, progress: TextIO | None
) -> None:
    assert samples is not None
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = _representative(samples, progress)
    conv.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
    ]
    conv.inference_input_type = getattr(tf, io_type)
    conv.inference_output_type = getattr(tf, io_type)


SETUP = {
    "float32": _setup_float32,
    "float16": _setup_float16,
    "dynamic": _setup_dynamic,
    "int8": _setup_int8,
    "int16x8": _setup_int16x8,
}


def convert(
    model: FloatModel, mode: str, io_type: str, samples: np.ndarray | None, progress: TextIO | None = None
) -> bytes:
    """Convert ``model`` in ``mode``; returns the .tflite bytes. ModelError with the reason when the
    converter cannot lower the model."""
    if mode in NEEDS_CALIBRATION and samples is None:
        raise ConfigError(f"--mode {mode} needs calibration data (--calib)")
    tf = import_tensorflow()
    first_error: tuple[BaseException, str] | None = None
    for factory in _converter_factories(tf, model):
        with captured_fds() as capture:
            try:
                conv = factory()
                SETUP[mode](tf, conv, io_type, samples, progress or capture.stderr)
                result = conv.convert()
            except Exception as exc:  # the converter raises ConverterError, ValueError, RuntimeError...
                result = None
                error = exc
        if result is not None and not _reads_variables(bytes(result)):
            return bytes(result)
        if result is not None:
            error = RuntimeError(
                "the converted model still reads variables (READ_VARIABLE ops): weights not frozen"
            )
        if first_error is None:
            first_error = (error, capture.text)
    assert first_error is not None
    raise _explain(model, mode, *first_error) from None


def _reads_variables(model: bytes) -> bool:
    """A SavedModel whose variables were not frozen converts "successfully" into a model that reads
    uninitialised variables and outputs garbage; its ops give it away."""
    from converter.litert import LiteModel

    return any(op in VARIABLE_OPS for op in LiteModel(model).ops())


def _explain(model: FloatModel, mode: str, exc: BaseException, captured: str) -> ModelError:
    """Turn a converter failure into one line saying what to do."""
    recurrent = model.recurrent_layers_without_unroll()
    if recurrent:
        return ModelError(
            f"{model.path}: the TFLite converter cannot lower recurrent layer(s) {', '.join(recurrent)}: "
            "build them with unroll=True (e.g. keras.layers.LSTM(64, unroll=True)) "
            "and a fixed sequence length, "
            "retrain or copy the weights, then convert again"
        )
    text = f"{exc}\n{captured}"
    errors = re.findall(r"error: (.+)", text)
    ops = sorted(set(re.findall(r"'((?:tf|tfl)\.[A-Za-z0-9_]+)' op", text)))
    detail = errors[0].strip() if errors else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    hint = f" (ops: {', '.join(ops)})" if ops else ""
    return ModelError(
        f"{model.path}: the TFLite converter cannot convert this model in mode {mode}{hint}: {detail[:300]}; "
        "replace the unsupported layers, or run with --verbose to see the converter's full output"
    )
