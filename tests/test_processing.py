"""Preprocessing: quantization round trips, the lookup-table path against a plain reference, geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_agent.errors import DataError, ModelError
from edge_agent.manifest import InputSpec, Preprocess, Quantization
from edge_agent.processing.preprocess import (
    LETTERBOX_PAD,
    FrameTransform,
    ImagePreprocessor,
    TensorPreprocessor,
    dequantize,
    quantize,
)

INT_TYPES = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16}

quantizations = st.builds(
    Quantization,
    scale=st.floats(min_value=1e-4, max_value=10.0, allow_nan=False),
    zero_point=st.integers(min_value=-128, max_value=127),
)


def _image_input(
    h: int, w: int, c: int = 3, dtype: str = "int8", q: Quantization | None = None, layout: str = "NHWC"
) -> InputSpec:
    if q is None and dtype != "float32":
        q = Quantization(scale=1 / 255, zero_point=-128 if dtype == "int8" else 0)
    shape = [1, c, h, w] if layout == "NCHW" else [1, h, w, c]
    return InputSpec(name="input", shape=shape, dtype=dtype, quantization=q, kind="image", layout=layout)


# -- quantize / dequantize --------------------------------------------------------------------------


@settings(deadline=None)  # a shared, loaded machine: no per-example time limit
@given(q=quantizations, dtype=st.sampled_from(["int8", "uint8", "int16"]), data=st.data())
def test_quantize_dequantize_is_identity_on_quantized_values(q, dtype, data) -> None:
    np_dtype = INT_TYPES[dtype]
    info = np.iinfo(np_dtype)
    zp = int(np.clip(q.zero_point, info.min, info.max))
    q = Quantization(scale=q.scale, zero_point=zp)
    values = data.draw(arrays(np_dtype, st.integers(1, 64), elements=st.integers(info.min, info.max)))
    back = quantize(dequantize(values, q), q, np_dtype)
    np.testing.assert_array_equal(back, values)


@settings(deadline=None)
@given(
    scale=st.floats(min_value=1e-3, max_value=1.0),
    zero_point=st.integers(-128, 127),
    fractions=arrays(np.float64, st.integers(1, 64), elements=st.floats(0.0, 1.0)),
)
def test_dequantize_quantize_error_is_at_most_half_a_step(scale, zero_point, fractions) -> None:
    q = Quantization(scale=scale, zero_point=zero_point)
    lo, hi = (-128 - zero_point) * scale, (127 - zero_point) * scale
    x = lo + fractions * (hi - lo)  # only values the int8 range can represent
    err = np.abs(dequantize(quantize(x, q, np.int8), q) - x)
    assert err.max() <= scale / 2 + 1e-6 * max(1.0, abs(hi), abs(lo))


def test_quantize_saturates_and_dequantize_widens_before_subtracting() -> None:
    q = Quantization(scale=0.5, zero_point=128)
    assert quantize(np.array([-1000.0, 1000.0]), q, np.uint8).tolist() == [0, 255]
    # uint8 3 - 128 would wrap to 131 in uint8; widened it is -125 steps
    assert dequantize(np.array([3], np.uint8), q).tolist() == [-62.5]
    q8 = Quantization(scale=1.0, zero_point=127)
    assert dequantize(np.array([-128], np.int8), q8).tolist() == [-255.0]  # int8 -128 - 127 overflows


def test_float_inputs_are_a_cast() -> None:
    x = np.array([0.25, -3.5])
    assert quantize(x, None, np.float32).dtype == np.float32
    assert dequantize(np.array([1, 2], np.int8), None).tolist() == [1.0, 2.0]


# -- image path -----------------------------------------------------------------------------------


def _reference(frame: np.ndarray, inp: InputSpec, pre: Preprocess) -> np.ndarray:
    """The slow obvious way: resize (same OpenCV steps), swap channels, normalize in float, quantize."""
    ip = ImagePreprocessor(inp, pre)
    canvas, _ = ip._canvas(frame)  # the geometry is tested separately; here: the arithmetic
    x = canvas.astype(np.float64).reshape(ip.height, ip.width, ip.channels)
    mean, std = np.array(pre.mean), np.array(pre.std)
    values = (x * pre.scale - mean) / std
    return quantize(values, inp.quantization, np.dtype(inp.dtype))[None]


@pytest.mark.parametrize("dtype", ["int8", "uint8", "float32", "int16"])
@pytest.mark.parametrize("resize", ["stretch", "letterbox", "crop"])
def test_lookup_table_equals_float_arithmetic(dtype: str, resize: str) -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    q = {
        "int8": Quantization(scale=0.0187, zero_point=-14),
        "uint8": Quantization(scale=0.0078125, zero_point=128),
        "int16": Quantization(scale=0.0001, zero_point=0),
        "float32": None,
    }[dtype]
    inp = _image_input(224, 224, dtype=dtype, q=q)
    pre = Preprocess(
        color="rgb", resize=resize, scale=1 / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
    )
    out = np.empty(inp.shape, np.dtype(dtype))
    ImagePreprocessor(inp, pre)(frame, out=out)
    expected = _reference(frame, inp, pre)
    if dtype == "float32":
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_array_equal(out, expected)


def test_channel_order_and_per_channel_normalization() -> None:
    inp = _image_input(4, 4, dtype="float32")
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[:] = (10, 20, 30)  # B, G, R
    pre = Preprocess(color="rgb", scale=1.0, mean=[1.0, 2.0, 3.0], std=[1.0, 2.0, 3.0])
    x, _ = ImagePreprocessor(inp, pre).to_float(frame)
    np.testing.assert_allclose(x[0, 0], [(30 - 1) / 1, (20 - 2) / 2, (10 - 3) / 3])
    bgr = Preprocess(color="bgr", scale=1.0)
    x, _ = ImagePreprocessor(inp, bgr).to_float(frame)
    np.testing.assert_allclose(x[0, 0], [10, 20, 30])


def test_gray_model_and_gray_frames() -> None:
    inp = _image_input(8, 8, c=1, dtype="float32")
    pre = Preprocess(color="gray", scale=1 / 255)
    frame = np.full((16, 16, 3), (0, 0, 255), np.uint8)  # pure red -> luma 0.299
    x, _ = ImagePreprocessor(inp, pre).to_float(frame)
    assert x.shape == (8, 8, 1)
    assert x[0, 0, 0] == pytest.approx(0.299, abs=2 / 255)
    x, _ = ImagePreprocessor(inp, pre).to_float(np.full((16, 16), 51, np.uint8))  # a gray camera
    assert x[3, 3, 0] == pytest.approx(0.2, abs=1e-6)


def test_nchw_layout() -> None:
    inp = _image_input(4, 4, dtype="float32", layout="NCHW")
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[..., 2] = 255  # red
    out = np.empty((1, 3, 4, 4), np.float32)
    ImagePreprocessor(inp, Preprocess(color="rgb", scale=1 / 255))(frame, out=out)
    assert out[0, 0].min() == 1.0 and out[0, 1:].max() == 0.0


def test_bad_frames_and_buffers_are_data_errors() -> None:
    pre = ImagePreprocessor(_image_input(8, 8), Preprocess(scale=1 / 255))
    with pytest.raises(DataError, match="uint8"):
        pre(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(DataError, match="frame shape"):
        pre(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(DataError, match="output buffer"):
        pre(np.zeros((8, 8, 3), np.uint8), out=np.empty((1, 8, 8, 3), np.float32))


def test_mean_with_the_wrong_number_of_channels_is_a_model_error() -> None:
    with pytest.raises(ModelError, match=r"preprocess\.mean: 2 values for a 3-channel input"):
        ImagePreprocessor(_image_input(8, 8), Preprocess(mean=[0.5, 0.5]))


# -- geometry -------------------------------------------------------------------------------------


def _transform(resize: str, fw: int, fh: int, w: int = 32, h: int = 32) -> FrameTransform:
    pre = ImagePreprocessor(_image_input(h, w), Preprocess(resize=resize, scale=1 / 255))
    return pre(np.zeros((fh, fw, 3), np.uint8))


@settings(max_examples=60, deadline=None)
@given(
    resize=st.sampled_from(["stretch", "letterbox", "crop"]),
    fw=st.integers(16, 1280),
    fh=st.integers(16, 960),
    box=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
)
def test_box_mapping_round_trip(resize, fw, fh, box) -> None:
    t = _transform(resize, fw, fh)
    # the part of the frame the model sees (all of it, except for crop) and a box inside it
    x0, y0, x1, y1 = t.box_to_frame(np.array([0.0, 0.0, 1.0, 1.0]))
    xs = sorted([x0 + box[0] * (x1 - x0), x0 + box[2] * (x1 - x0)])
    ys = sorted([y0 + box[1] * (y1 - y0), y0 + box[3] * (y1 - y0)])
    b = np.array([xs[0], ys[0], xs[1], ys[1]])
    np.testing.assert_allclose(t.box_to_frame(t.box_to_input(b)), b, atol=1e-9)
    if resize != "crop":
        np.testing.assert_allclose([x0, y0, x1, y1], [0, 0, 1, 1], atol=1e-9)


def test_letterbox_pads_and_maps_a_drawn_rectangle_back() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    cv2.rectangle(frame, (160, 120), (479, 359), (255, 255, 255), thickness=-1)  # x 160..480, y 120..360
    inp = _image_input(64, 64, dtype="uint8", q=Quantization(scale=1.0, zero_point=0))
    pre = ImagePreprocessor(inp, Preprocess(resize="letterbox", color="rgb", scale=1.0))
    out = np.empty(inp.shape, np.uint8)
    t = pre(frame, out=out)
    img = out[0, ..., 0]
    assert (img[:8] == LETTERBOX_PAD).all() and (img[-8:] == LETTERBOX_PAD).all()  # 640x480 -> 64x48 + 8 pad
    ys, xs = np.nonzero(img > 200)
    found = np.array([xs.min() / 64, ys.min() / 64, (xs.max() + 1) / 64, (ys.max() + 1) / 64])
    np.testing.assert_allclose(t.box_to_frame(found), [0.25, 0.25, 0.75, 0.75], atol=2 / 48)


def test_centre_crop_geometry() -> None:
    t = _transform("crop", 640, 480, 224, 224)  # the centre 480x480 of the frame
    np.testing.assert_allclose(
        t.box_to_frame(np.array([0.0, 0.0, 1.0, 1.0])), [80 / 640, 0, 560 / 640, 1], atol=1e-3
    )


def test_stretch_geometry_is_the_identity_in_normalized_coordinates() -> None:
    for fw, fh in ((640, 480), (641, 479), (1920, 1080)):  # with and without an integer pre-shrink
        t = _transform("stretch", fw, fh, 224, 224)
        np.testing.assert_allclose(
            t.box_to_frame(np.array([0.1, 0.2, 0.3, 0.4])), [0.1, 0.2, 0.3, 0.4], atol=1e-9
        )


# -- sensor windows -------------------------------------------------------------------------------


def test_tensor_preprocessor_quantizes_and_checks_size() -> None:
    inp = InputSpec(
        name="x", shape=[1, 6], dtype="int8", quantization=Quantization(scale=0.01, zero_point=-100)
    )
    tp = TensorPreprocessor(inp)
    out = np.empty((1, 6), np.int8)
    tp(np.array([[0.0, 0.5], [1.0, 1.5], [2.0, 2.27]]), out=out)  # (3, 2) window, 6 values
    assert out.tolist() == [[-100, -50, 0, 50, 100, 127]]  # 2.27 saturates
    with pytest.raises(DataError, match=r"does not fit input 'x' of shape \[1, 6\]"):
        tp(np.zeros(5))
    with pytest.raises(DataError, match="NaN"):
        tp(np.array([0, 0, 0, 0, 0, np.nan]))


def test_tensor_preprocessor_refuses_swapped_axes() -> None:
    inp = InputSpec(name="w", shape=[1, 50, 3], dtype="float32", layout="NTC")
    tp = TensorPreprocessor(inp)
    tp(np.zeros((50, 3)))  # samples x channels: right
    tp(np.zeros((1, 50, 3)))
    with pytest.raises(DataError, match="axes are swapped"):
        tp(np.zeros((3, 50)))
