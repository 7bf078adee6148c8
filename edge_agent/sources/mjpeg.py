"""Decoding a camera's MJPEG at a fraction of its size (``decode_size: auto``): libjpeg's DCT scaling
makes a 1/2, 1/4 or 1/8 size image straight from the packet, with no full-size image ever made."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.sources.camera import CameraSource

log = logging.getLogger("edge_agent.sources.camera")  # its messages are the camera's

_JPEG_GIVE_UP = 10  # packets in a row libjpeg cannot decode, none before, before FFmpeg decodes instead
_JPEG_SCALES = (8, 4, 2)  # the reduced sizes libjpeg decodes to directly (cv2.IMREAD_REDUCED_COLOR_<n>)


def jpeg_scale(width: int, height: int, min_size: tuple[int, int]) -> int:
    """The largest DCT scale (1, 2, 4 or 8) whose output, ceil(width / s) x ceil(height / s), still covers
    ``min_size`` (width, height); 1 = decode full size."""
    min_w, min_h = min_size
    for scale in _JPEG_SCALES:
        if -(-width // scale) >= min_w and -(-height // scale) >= min_h:
            return scale
    return 1


class ScaledJpeg:
    """Decoding MJPEG at a fraction of its size (``decode_size: auto``): a capture that is MJPEG (a file or
    stream through FFmpeg, a USB camera through OpenCV's V4L2 backend) hands out the JPEG packets as they
    are from its opening on, and libjpeg decodes them: full size until the consumer has said how small a
    frame it can use, then reduced (its DCT scaling skips most of the inverse transform; no full-size image
    is made). 640x480 for a 224x224 model: 1/2 size, 0.15 ms less CPU and 0.7 MB less memory per frame. A
    reload to a model with a larger input rescales."""

    def __init__(self, source: CameraSource) -> None:
        self.source = source
        self.raw = False  # the capture hands out JPEG packets
        self.undecided = source.cfg.decode_size == "auto" and source._scaled_jpeg_ok
        self.failures = 0  # packets in a row that did not decode
        self._decoded = 0
        self._full: tuple[int, int] = (0, 0)
        self._for: tuple[int, int] | None = None  # the min_size the scale was chosen for
        self._flag = 0

    def begin(self, cap: Any) -> None:
        """Right after opening: an MJPEG capture hands out its packets from the first one on, so FFmpeg's
        decoder never allocates its frames (~3 MB); libjpeg decodes them at the scale chosen from the
        stream's size as soon as the consumer's min_size is known, full size before that."""
        if not self.undecided:
            return
        cv2 = self.source._cv2
        jpegs = (cv2.VideoWriter_fourcc(*"MJPG"), cv2.VideoWriter_fourcc(*"JPEG"))  # JPEG: V4L2's other name
        if int(cap.get(cv2.CAP_PROP_FOURCC)) not in jpegs:
            self.undecided = False  # FFmpeg (or the V4L2 backend) decodes, as for every other codec
            return
        # raw mode: FFmpeg hands out the packets as they are (CAP_PROP_FORMAT -1); OpenCV's V4L2 backend
        # each buffer's JPEG bytes, 1 x bytesused, without decoding them itself (CAP_PROP_CONVERT_RGB 0)
        raw = (cv2.CAP_PROP_CONVERT_RGB, 0) if self.source.kind == "device" else (cv2.CAP_PROP_FORMAT, -1)
        if cap.set(*raw):
            self.raw, self._flag = True, cv2.IMREAD_COLOR
            size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            self._full = size if min(size) > 0 else (0, 0)  # unknown: taken from the first full frame
        else:
            self.undecided = False

    def decide(self, image: Any = None) -> None:
        """Decode reduced from now on if it pays (the full size: the stream's, else ``image``'s, a full-size
        frame); undecided until min_size is known (without a reduced scale, libjpeg decodes full size)."""
        src = self.source
        if src.min_size is None or src.preparer is None:
            return  # not known yet (the pipeline starts after the source), or full frames are needed
        self.undecided = False
        width, height = self._full if self._full != (0, 0) else image.shape[1::-1]
        if jpeg_scale(width, height, src.min_size) == 1:
            return
        self._full = (width, height)
        self._rescale()

    def readable(self, packet: Any) -> bool:
        """Whether libjpeg decodes ``packet`` (at 1/8 size: the start's check, no full-size image made)."""
        if self.source._cv2.imdecode(packet, self.source._cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
            self.failures += 1
            return False
        return True

    def _rescale(self) -> None:
        src = self.source
        self._for = src.min_size
        scale = jpeg_scale(*self._full, self._for) if self._for is not None else 1
        cv2 = src._cv2
        self._flag = getattr(cv2, f"IMREAD_REDUCED_COLOR_{scale}") if scale > 1 else cv2.IMREAD_COLOR
        with src._cond:
            src._decode_scale = scale
        log.info(
            "camera %s: MJPEG %dx%d decoded at 1/%d size for a model input of %s",
            src._label, *self._full, scale, "x".join(map(str, self._for or ("any",))),
        )  # fmt: skip

    def decode(self, packet: Any) -> Any:
        """A BGR image, or None for a packet that is not a decodable JPEG."""
        if self.undecided and self._full != (0, 0):
            self.decide()
        elif self._for is not None and self.source.min_size != self._for:  # scale decided, then a reload
            self._rescale()
        image = self.source._cv2.imdecode(packet, self._flag)
        if image is None:
            self.failures += 1
        else:
            self.failures, self._decoded = 0, self._decoded + 1
        return image

    def decode_grey(self, packet: Any, width: int) -> Any:
        """A grey copy at least ``width`` pixels wide (a motion gate's glance) at the smallest DCT scale that
        gives it: only the luma is transformed, at a fraction of its size. None while the stream's size is
        not known, or for a packet that does not decode (the full decode then counts it)."""
        if self._full == (0, 0):
            return None
        cv2 = self.source._cv2
        scale = jpeg_scale(*self._full, (width, 1))
        return cv2.imdecode(packet, getattr(cv2, f"IMREAD_REDUCED_GRAYSCALE_{scale}", cv2.IMREAD_GRAYSCALE))

    @property
    def hopeless(self) -> bool:
        """libjpeg has decoded none of the first packets: a variant only FFmpeg reads; give up on it."""
        return self._decoded == 0 and self.failures >= _JPEG_GIVE_UP
