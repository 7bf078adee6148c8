"""Load the float model the user gives: a ``.keras`` file, a legacy ``.h5`` file or a SavedModel directory.

Keras 3 loads ``.keras`` and ``.h5``; a SavedModel (Keras 2's ``model.save(dir)``, ``tf.saved_model.save``,
Keras 3's ``model.export``) is not loadable as a Keras model any more, so it is run through its serving
signature and converted with ``TFLiteConverter.from_saved_model``. The file type is checked from its bytes
before TensorFlow is imported, so a wrong file fails in milliseconds with a clear message.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from converter.quiet import captured_fds, import_tensorflow
from edge_agent.errors import ModelError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
RECURRENT_LAYERS = ("LSTM", "GRU", "SimpleRNN", "RNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")

ModelKind = Literal["keras", "h5", "saved_model"]


@dataclass
class FloatModel:
    """The float reference model: what was loaded, its tensor shapes, and how to run it."""

    path: Path
    kind: ModelKind
    input_shape: tuple[int | None, ...]  # batch first, None for unknown dims
    output_shapes: list[tuple[int | None, ...]]
    output_names: list[str]
    keras_model: Any = None  # keras.Model for .keras/.h5
    signature: Any = None  # concrete serving function for a SavedModel
    saved_model: Any = field(default=None, repr=False)  # owns the signature's variables

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name

    def predict(self, x: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
        """Float outputs for a batch of samples, one array per output."""
        x = np.asarray(x, dtype=np.float32)
        chunks: list[list[np.ndarray]] = []
        for start in range(0, len(x), batch_size):
            chunks.append(self._run(x[start : start + batch_size]))
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(self.output_names))]

    def predict_one(self) -> Callable[[np.ndarray], object]:
        """A callable for latency measurement on one sample (no numpy conversion of the output)."""
        if self.keras_model is not None:
            model = self.keras_model
            return lambda x: model(x, training=False)
        return lambda x: self.signature(**{self._input_key: x})

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        if self.keras_model is not None:
            out = self.keras_model(x, training=False)
            outs = out if isinstance(out, (list, tuple)) else [out]
            return [np.asarray(o) for o in outs]
        result = self.signature(**{self._input_key: x})
        return [np.asarray(result[name]) for name in self.output_names]

    @property
    def _input_key(self) -> str:
        return next(iter(self.signature.structured_input_signature[1]))

    def with_input_shape(self, sample_shape: tuple[int, ...] | None) -> FloatModel:
        """Fix unknown input dimensions (TFLite needs them: a dynamic H/W converts as 1x1). ModelError
        naming the shape when dims are unknown and no ``sample_shape`` (without batch) was given."""
        unknown = None in self.input_shape[1:]
        if sample_shape is None:
            if unknown:
                dims = ",".join("H" if d is None else str(d) for d in self.input_shape[1:])
                raise ModelError(
                    f"{self.path}: the model input {list(self.input_shape)} has unknown dimensions; "
                    f"give the size the device will use with --input-shape (e.g. {dims.replace('H', '224')})"
                )
            return self
        known = self.input_shape[1:]
        if len(sample_shape) != len(known) or any(
            k is not None and k != s for k, s in zip(known, sample_shape, strict=True)
        ):
            raise ModelError(
                f"--input-shape {','.join(map(str, sample_shape))} does not fit the model input "
                f"{list(self.input_shape)}"
            )
        if not unknown:
            return self
        if self.keras_model is None:
            raise ModelError(
                f"{self.path}: a SavedModel with unknown input dimensions {list(self.input_shape)} cannot be "
                "reshaped here; export it with a fixed input shape (or convert the Keras model instead)"
            )
        import keras

        inp = keras.Input(shape=tuple(sample_shape), name=self.keras_model.inputs[0].name.split(":")[0])
        fixed = keras.Model(inp, self.keras_model(inp), name=self.keras_model.name)
        return FloatModel(
            path=self.path,
            kind=self.kind,
            input_shape=(None, *sample_shape),
            output_shapes=[tuple(o.shape) for o in fixed.outputs],
            output_names=self.output_names,
            keras_model=fixed,
        )

    def batch_of_one(self) -> Any:
        """The Keras model rebuilt on a fixed batch of 1, for conversion.

        With a dynamic batch the converter keeps ops that compute the batch at run time (SHAPE,
        STRIDED_SLICE, PACK before a Flatten) and the interpreter re-allocates its tensors at the first
        invoke; the device always feeds one frame, so a static graph is smaller and simpler to run.
        The unchanged model is kept for batched float predictions. Models with recurrent layers are
        left as they are: on a static batch, int8 calibration of a non-unrolled LSTM crashed the process
        (SIGSEGV in TensorFlow 2.21) instead of failing with a message."""
        if self.keras_model is None or None in self.input_shape[1:] or self.recurrent_layers_without_unroll():
            return self.keras_model
        import keras

        try:
            inp = keras.Input(
                batch_shape=(1, *self.input_shape[1:]), name=self.keras_model.inputs[0].name.split(":")[0]
            )
            return keras.Model(inp, self.keras_model(inp), name=self.keras_model.name)
        except Exception:  # a model that cannot be re-applied: convert it as it is
            return self.keras_model

    def recurrent_layers_without_unroll(self) -> list[str]:
        """Names of LSTM/GRU-like layers the TFLite converter cannot lower (they need ``unroll=True``)."""
        if self.keras_model is None:
            return []
        found = []
        for layer in _all_layers(self.keras_model):
            if type(layer).__name__ in RECURRENT_LAYERS and not getattr(layer, "unroll", True):
                found.append(f"{layer.name} ({type(layer).__name__})")
        return found

    def ends_in_softmax(self) -> bool:
        """True when the last layer applies softmax (activation or a Softmax layer)."""
        if self.keras_model is None or not self.keras_model.layers:
            return False
        last = self.keras_model.layers[-1]
        if type(last).__name__ == "Softmax":
            return True
        activation = getattr(last, "activation", None)
        return getattr(activation, "__name__", "") == "softmax"


def _all_layers(model: Any) -> list[Any]:
    layers = []
    for layer in getattr(model, "layers", []):
        layers.append(layer)
        if hasattr(layer, "layers"):
            layers.extend(_all_layers(layer))
        inner = getattr(layer, "layer", None)  # Bidirectional / TimeDistributed wrappers
        if inner is not None:
            layers.append(inner)
    return layers


def detect_kind(path: Path) -> ModelKind:
    """Tell the model format from the path and its bytes; ModelError when it is not a model we can load."""
    if not path.exists():
        raise ModelError(
            f"{path}: no such file or directory; give a .keras file, a .h5 file or a SavedModel directory"
        )
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "saved_model"
        raise ModelError(
            f"{path}: directory is not a SavedModel (no saved_model.pb inside); "
            "give a .keras file, a .h5 file or a SavedModel directory"
        )
    with path.open("rb") as f:
        head = f.read(8)
    if head == HDF5_SIGNATURE:
        return "h5"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if "config.json" in zf.namelist():
                return "keras"
    raise ModelError(
        f"{path}: not a Keras model (neither a .keras archive nor an HDF5 file); "
        "give a .keras file, a .h5 file or a SavedModel directory"
    )


def load_float_model(path: Path) -> FloatModel:
    """Load the model with clear errors; only single-input models are supported."""
    path = Path(path)
    kind = detect_kind(path)
    tf = import_tensorflow()
    if kind == "saved_model":
        return _load_saved_model(tf, path)
    import keras

    try:
        with captured_fds():
            model = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise ModelError(f"{path}: Keras cannot load this model: {_first_line(exc)}") from None
    inputs = model.inputs
    if len(inputs) != 1:
        raise ModelError(
            f"{path}: the model has {len(inputs)} inputs; edge-convert supports single-input models"
        )
    outputs = model.outputs
    return FloatModel(
        path=path,
        kind=kind,
        input_shape=tuple(inputs[0].shape),
        output_shapes=[tuple(o.shape) for o in outputs],
        output_names=[getattr(o, "name", f"output_{i}") for i, o in enumerate(outputs)],
        keras_model=model,
    )


def _load_saved_model(tf: Any, path: Path) -> FloatModel:
    try:
        with captured_fds():
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelError(f"{path}: TensorFlow cannot load this SavedModel: {_first_line(exc)}") from None
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" not in signatures:
        raise ModelError(
            f"{path}: the SavedModel has no 'serving_default' signature; "
            "save it with model.export(dir) or tf.saved_model.save(model, dir, signatures=...)"
        )
    fn = signatures["serving_default"]
    input_specs = fn.structured_input_signature[1]
    if len(input_specs) != 1:
        raise ModelError(
            f"{path}: the signature has {len(input_specs)} inputs; edge-convert supports one input"
        )
    spec = next(iter(input_specs.values()))
    names = sorted(fn.structured_outputs)
    return FloatModel(
        path=path,
        kind="saved_model",
        input_shape=tuple(spec.shape.as_list()),
        output_shapes=[tuple(fn.structured_outputs[n].shape.as_list()) for n in names],
        output_names=names,
        signature=fn,
        saved_model=loaded,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
