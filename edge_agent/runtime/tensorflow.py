"""Backend: tensorflow.lite from a full TensorFlow install. Only when the user names it (or nothing else
is installed): importing TensorFlow costs seconds and hundreds of MB on a device."""

from __future__ import annotations

from edge_agent.errors import missing_extra
from edge_agent.runtime.backends import BACKENDS, RuntimeApi, _version

NAME = "tensorflow"


def load_api() -> RuntimeApi:
    try:
        import tensorflow as tf
    except (ImportError, AttributeError, OSError, RuntimeError) as exc:  # e.g. built for numpy<2
        raise missing_extra("tensorflow", "convert", exc) from None
    return RuntimeApi(
        NAME,
        _version(BACKENDS[NAME][2]),
        tf.lite.Interpreter,
        tf.lite.experimental.load_delegate,
        tf.lite.experimental.OpResolverType,
    )
