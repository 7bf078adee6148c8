"""Knowledge distillation: train a smaller student on a teacher classifier's softened outputs.

The loss is Hinton et al.'s: KL divergence between the teacher's and the student's softmax at
temperature T, times T^2 (so its gradients keep their size as T changes), mixed with the ordinary
cross-entropy on the true labels where the data has them (``alpha`` is the labels' weight); unlabelled
samples get the soft loss only. The teacher's outputs are computed once before training.

The student is a ``.keras`` file (an untrained architecture) or ``width:F``, the teacher's own
architecture with every hidden layer F times as wide, for two known families: Keras' MobileNetV2
(rebuilt with ``alpha`` times F) and plain ``keras.Sequential`` stacks of Conv/Dense layers, such as
the project's digits CNN (``converter/examples.py``).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edge_agent.errors import ConfigError, ModelError

WIDTH_PREFIX = "width:"
# layers a width:F Sequential student may contain: the width-bearing ones are scaled, the rest adapt
WIDTH_KEYS = {"Conv1D": "filters", "Conv2D": "filters", "SeparableConv2D": "filters", "Dense": "units"}
SHAPE_FREE_LAYERS = {
    "InputLayer", "DepthwiseConv2D", "BatchNormalization", "LayerNormalization", "Activation", "ReLU",
    "LeakyReLU", "Softmax", "Dropout", "SpatialDropout2D", "Flatten", "MaxPooling1D", "MaxPooling2D",
    "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Rescaling", "ZeroPadding2D", "Identity",
}  # fmt: skip
MOBILENET_V2_NAME = re.compile(r"^mobilenetv2_(\d+(?:\.\d+)?)_\d+$")  # keras.applications' own name
EPSILON = 1e-7  # floor for probabilities before log: float32 softmax underflows to exactly 0


@dataclass(frozen=True)
class Settings:
    epochs: int = 30
    batch_size: int = 64
    temperature: float = 4.0  # Hinton et al. used 2..20; 4 keeps the teacher's runner-up classes visible
    alpha: float = 0.3  # weight of the hard-label loss on labelled samples; 1 - alpha for the soft loss
    learning_rate: float = 0.002
    validation_split: float = 0.1
    seed: int = 0


def parse_student(spec: str) -> float | Path:
    """``width:F`` (0 < F < 1) -> F; otherwise a path to an existing .keras file. ConfigError else."""
    if spec.startswith(WIDTH_PREFIX):
        text = spec[len(WIDTH_PREFIX) :]
        try:
            factor = float(text)
        except ValueError:
            factor = math.nan
        if not 0 < factor < 1:
            raise ConfigError(
                f"--student {spec}: the width factor must be a number between 0 and 1, e.g. width:0.5"
            )
        return factor
    path = Path(spec)
    if path.suffix != ".keras" or not path.is_file():
        raise ConfigError(
            f"--student {spec}: give a .keras file with the student's (untrained) architecture, "
            "or width:F for the teacher's architecture F times as wide (e.g. width:0.5)"
        )
    return path


# ---------------------------------------------------------------------------------------------- students


def student_by_width(teacher: Any, factor: float) -> Any:
    """A fresh, untrained copy of ``teacher``'s architecture with hidden layers ``factor`` times as wide.

    ModelError naming the supported families when the teacher is neither of them."""
    match = MOBILENET_V2_NAME.match(teacher.name)
    if match:
        return _mobilenet_v2(teacher, float(match.group(1)) * factor)
    import keras

    if isinstance(teacher, keras.Sequential):
        return _narrow_sequential(teacher, factor)
    raise ModelError(
        f"--student width:{factor:g}: the teacher {teacher.name!r} is not a family edge-convert can narrow "
        "(keras.applications MobileNetV2, or a keras.Sequential stack of Conv/Dense layers); "
        "give the student's architecture as a .keras file instead"
    )


def _mobilenet_v2(teacher: Any, alpha: float) -> Any:
    import keras

    classes = teacher.outputs[0].shape[-1]
    last = teacher.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "softmax")
    return keras.applications.MobileNetV2(
        input_shape=tuple(teacher.inputs[0].shape[1:]),
        alpha=round(alpha, 4),
        include_top=True,
        weights=None,
        classes=classes,
        classifier_activation=activation,
    )


def _narrow_sequential(teacher: Any, factor: float) -> Any:
    import keras

    layers = teacher.layers
    unknown = [
        f"{layer.name} ({type(layer).__name__})"
        for layer in layers
        if type(layer).__name__ not in WIDTH_KEYS and type(layer).__name__ not in SHAPE_FREE_LAYERS
    ]
    if unknown:
        raise ModelError(
            f"--student width:{factor:g}: the teacher has layers edge-convert does not know how to narrow "
            f"({', '.join(unknown[:4])}); give the student's architecture as a .keras file instead"
        )
    scalable = [i for i, layer in enumerate(layers) if type(layer).__name__ in WIDTH_KEYS]
    if len(scalable) < 2:
        raise ModelError(
            f"--student width:{factor:g}: the teacher has no hidden Conv/Dense layer to narrow; "
            "give the student's architecture as a .keras file instead"
        )
    output_layer = scalable[-1]  # its width is the number of classes: kept
    new_layers = []
    for i, layer in enumerate(layers):
        config = layer.get_config()
        key = WIDTH_KEYS.get(type(layer).__name__)
        if key is not None and i != output_layer:
            config[key] = max(1, round(config[key] * factor))
        new_layers.append(type(layer).from_config(config))
    inputs = keras.Input(shape=tuple(teacher.inputs[0].shape[1:]), name=teacher.inputs[0].name.split(":")[0])
    return keras.Sequential([inputs, *new_layers], name=teacher.name)


def check_student(student: Any, teacher: Any, source: str) -> None:
    """ModelError unless the student takes the teacher's input and gives its number of classes."""
    if len(student.inputs) != 1 or len(student.outputs) != 1:
        raise ModelError(f"--student {source}: the student must have one input and one output")
    t_in, s_in = tuple(teacher.inputs[0].shape[1:]), tuple(student.inputs[0].shape[1:])
    if t_in != s_in:
        raise ModelError(
            f"--student {source}: its input {list(s_in)} differs from the teacher's {list(t_in)}; "
            "the student must read the same data"
        )
    t_out, s_out = tuple(teacher.outputs[0].shape[1:]), tuple(student.outputs[0].shape[1:])
    if t_out != s_out:
        raise ModelError(
            f"--student {source}: its output {list(s_out)} differs from the teacher's {list(t_out)}; "
            "the student must give one score per class of the teacher"
        )


def check_teacher(teacher: Any, path: Path) -> int:
    """The number of classes; ModelError unless the teacher is a single-output classifier (N, classes)."""
    if teacher is None:
        raise ModelError(f"{path}: distill needs a Keras teacher (.keras or .h5), not a SavedModel")
    if len(teacher.outputs) != 1 or len(teacher.outputs[0].shape) != 2 or not teacher.outputs[0].shape[-1]:
        raise ModelError(
            f"{path}: distill supports classifiers with one (N, classes) output; "
            f"this model outputs {[list(o.shape) for o in teacher.outputs]}"
        )
    return int(teacher.outputs[0].shape[-1])


# ---------------------------------------------------------------------------------------------- training


def ends_in_softmax(model: Any) -> bool:
    """True when the last layer applies softmax (an activation or a Softmax layer)."""
    if not model.layers:
        return False
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    return type(last).__name__ == "Softmax" or getattr(activation, "__name__", "") == "softmax"


def to_logits(outputs: np.ndarray, are_probabilities: bool) -> np.ndarray:
    """Logits up to a per-sample constant (which softmax ignores): log of probabilities, else as they are."""
    outputs = np.asarray(outputs, dtype=np.float64)
    return np.log(np.clip(outputs, EPSILON, 1.0)) if are_probabilities else outputs


def soften(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def pack_targets(soft: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    """One array per sample for Keras' fit: [soft targets | one-hot label | 1 if labelled]."""
    n, classes = soft.shape
    onehot = np.zeros((n, classes), dtype=np.float32)
    labelled = np.zeros((n, 1), dtype=np.float32)
    if y is not None:
        onehot[np.arange(n), y] = 1.0
        labelled[:] = 1.0
    return np.concatenate([soft, onehot, labelled], axis=1)


def distillation_loss(classes: int, settings: Settings, student_probabilities: bool) -> Callable[..., Any]:
    from keras import ops

    t, alpha = settings.temperature, settings.alpha

    def loss(packed: Any, output: Any) -> Any:
        soft, onehot, labelled = packed[:, :classes], packed[:, classes : 2 * classes], packed[:, 2 * classes]
        logits = ops.log(ops.clip(output, EPSILON, 1.0)) if student_probabilities else output
        student_soft = ops.log_softmax(logits / t, axis=-1)
        kl = ops.sum(soft * (ops.log(ops.clip(soft, EPSILON, 1.0)) - student_soft), axis=-1) * (t * t)
        hard = -ops.sum(onehot * ops.log_softmax(logits, axis=-1), axis=-1)
        return labelled * (alpha * hard + (1 - alpha) * kl) + (1 - labelled) * kl

    return loss


def agreement_metric(classes: int) -> Callable[..., Any]:
    from keras import ops

    def agreement(packed: Any, output: Any) -> Any:
        same = ops.argmax(packed[:, :classes], axis=-1) == ops.argmax(output, axis=-1)
        return ops.cast(same, "float32")

    return agreement


def accuracy_metric(classes: int) -> Callable[..., Any]:
    from keras import ops

    def accuracy(packed: Any, output: Any) -> Any:
        same = ops.argmax(packed[:, classes : 2 * classes], axis=-1) == ops.argmax(output, axis=-1)
        return ops.cast(same, "float32")

    return accuracy


@dataclass(frozen=True)
class TrainingResult:
    history: dict[str, list[float]]
    train_samples: int
    validation_samples: int


def train_student(
    teacher: Any,
    student: Any,
    x: np.ndarray,
    y: np.ndarray | None,
    settings: Settings,
    progress: TextIO | None,
) -> TrainingResult:
    """Fit ``student`` in place on ``teacher``'s softened outputs for ``x`` (and the labels ``y``)."""
    import keras

    keras.utils.set_random_seed(settings.seed)
    classes = int(teacher.outputs[0].shape[-1])
    teacher_out = np.asarray(teacher.predict(x, batch_size=256, verbose=0))
    teacher_probs = ends_in_softmax(teacher) or _look_like_probabilities(teacher_out)
    packed = pack_targets(soften(to_logits(teacher_out, teacher_probs), settings.temperature), y)

    order = np.random.default_rng(settings.seed).permutation(len(x))
    n_val = round(len(x) * settings.validation_split) if len(x) > 1 else 0
    val, train = order[:n_val], order[n_val:]
    # train a functional view of the student, so the saved student carries no training configuration
    trainer = keras.Model(student.inputs, student.outputs)
    metrics = [agreement_metric(classes)] + ([accuracy_metric(classes)] if y is not None else [])
    trainer.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss=distillation_loss(classes, settings, ends_in_softmax(student)),
        metrics=metrics,
    )
    steps = math.ceil(len(train) / settings.batch_size)
    history = trainer.fit(
        x[train],
        packed[train],
        validation_data=(x[val], packed[val]) if n_val else None,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[epoch_progress(settings.epochs, steps, progress)],
    )
    return TrainingResult({k: [float(v) for v in vs] for k, vs in history.history.items()}, len(train), n_val)


def _look_like_probabilities(outputs: np.ndarray) -> bool:
    return bool(np.all(outputs >= -1e-6) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3))


def epoch_progress(epochs: int, steps: int, stream: TextIO | None) -> Any:
    """A Keras callback: a click progress bar per epoch (only the label when not a TTY), then one line
    with the epoch's loss and its agreement with the teacher / accuracy on the validation split."""
    import click
    import keras

    class _EpochProgress(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.bar: Any = None

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if stream is not None and stream.isatty():
                self.bar = click.progressbar(length=steps, label=f"epoch {epoch + 1}/{epochs}", file=stream)
                self.bar.__enter__()

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if self.bar is not None:
                self.bar.update(1)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None
            if stream is None:
                return
            logs = logs or {}
            parts = [f"epoch {epoch + 1}/{epochs}", f"loss {logs.get('loss', math.nan):.4f}"]
            if "val_agreement" in logs:
                parts.append(f"validation: agreement with teacher {logs['val_agreement'] * 100:.2f}%")
            if "val_accuracy" in logs:
                parts.append(f"accuracy {logs['val_accuracy'] * 100:.2f}%")
            stream.write("  ".join(parts) + "\n")
            stream.flush()

    return _EpochProgress()


# ---------------------------------------------------------------------------------------------- output


def save_atomically(model: Any, out: Path) -> None:
    """Save to a temp .keras file beside ``out``, then rename: an interrupted or failed save leaves no
    partial ``out`` (Keras needs the .keras suffix, so the temp name ends in it too)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".partial.keras", dir=out.parent or ".")
    os.close(fd)
    try:
        model.save(tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give the model the usual mode
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
