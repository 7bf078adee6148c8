"""Resident memory the daemon does not need to keep: a board with 1 GB runs more than just us.

- The interpreter maps the .tflite file; XNNPACK then packs the weights into memory of its own, and the
  mapped pages, read once while packing, stay resident for nothing (3.8 MB for MobileNetV2-int8).
  ``release_mapped_file`` drops them from this process (MADV_DONTNEED on a shared read-only file mapping:
  a page read again later, by an op XNNPACK does not run, comes back from the page cache, unchanged).
- glibc gives every thread that allocates its own malloc arena; with a handful of threads the partly
  used arenas add up (~2 MB here). Two arenas are plenty for one inference thread plus I/O threads.

- glibc raises its mmap threshold each time a large block is freed (up to 32 MB), so once a frame-sized
  buffer was freed, later ones come from the heap, and the freed ones stay resident there as fragments
  (3.4 MB in the one-camera daemon: its RSS grew from 100 to 105 MB while running). A fixed threshold keeps
  blocks of 128 KiB and more in their own mappings, given back when freed.
- ... but not a camera's frames: each frame's decoded image, model input and preprocessing temporaries
  would then be mapped, page-faulted in and unmapped again, frame after frame (30,000-50,000 page faults a
  second, 5-7% of the one-camera daemon's results). ``fit_frames`` raises the fixed threshold just above
  the frame-sized buffers a camera makes, once it knows their size: they come from the heap, where the
  next frame reuses the last one's (+0.5 MB resident for a 640x480 camera, no faults).

- A reload or a deployment frees an interpreter (and a restarted pipeline its capture) while their successors
  were allocated around them: the holes stay resident in the heap. In a two-camera daemon each reload kept
  ~1.5 MB more, up to ~18 MB after 20 (``scripts/soak.py``). ``trim_heap`` gives them back (glibc's
  ``malloc_trim``: 0.1-1 ms); the daemon's main loop calls it every ``TRIM_EVERY_S``.

All are Linux/glibc facilities; elsewhere they do nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_MADV_DONTNEED = 4
_M_ARENA_MAX = -8
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, made fixed
MAX_FRAME_THRESHOLD = 8 * 1024 * 1024  # a larger frame (a full-size 1080p one is 6 MB) keeps its own mapping

_threshold_lock = threading.Lock()
_fixed_threshold: int | None = None  # set by fix_mmap_threshold: None = malloc is left as it is


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def release_mapped_file(path: Path) -> int:
    """Drop this process's resident pages of every mapping of ``path``; returns the bytes of mappings
    released (0 when the file is not mapped or this is not Linux)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "madvise"):
        return 0
    real = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as maps:
            ranges = [
                tuple(int(x, 16) for x in parts[0].split("-"))
                for parts in (line.split(maxsplit=5) for line in maps)
                if len(parts) == 6 and parts[5].rstrip("\n") == real
            ]
    except OSError:
        return 0
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for start, end in ranges:
        if madvise(start, end - start, _MADV_DONTNEED) == 0:
            released += end - start
        else:
            log.debug("madvise on %s failed: %s", real, os.strerror(ctypes.get_errno()))
    return released


def trim_heap() -> bool:
    """Give the free memory inside malloc's heaps back to the kernel (glibc's ``malloc_trim(0)``, which also
    releases free pages between blocks in use); True when some was released. False if not glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (like MALLOC_ARENA_MAX); call before starting threads. False if not glibc
    or the environment already sets MALLOC_ARENA_MAX (the operator's choice wins)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas))


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (like MALLOC_MMAP_THRESHOLD_), turning off its dynamic raising; call
    before starting threads. False if not glibc or the environment already sets it (the operator wins)."""
    global _fixed_threshold
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    with _threshold_lock:
        if not libc.mallopt(_M_MMAP_THRESHOLD, threshold):
            return False
        _fixed_threshold = threshold
    return True


def fit_frames(nbytes: int) -> int | None:
    """Let buffers of ``nbytes`` (a camera's decoded frame, its model input) come from malloc's heap, where
    the next frame reuses a freed one, instead of a mapping made and unmapped for every frame. Raises the
    fixed threshold to the next power of two above ``nbytes`` (at most MAX_FRAME_THRESHOLD; never lowers
    it) and the heap's trim threshold to twice that, so a freed frame at the heap's top is not given back
    only to be faulted in again. Only after fix_mmap_threshold; returns the new threshold, else None."""
    global _fixed_threshold
    want = min(1 << max(int(nbytes), 1).bit_length(), MAX_FRAME_THRESHOLD)
    with _threshold_lock:
        if _fixed_threshold is None or want <= _fixed_threshold:
            return None
        libc = _libc()
        if libc is None or not libc.mallopt(_M_MMAP_THRESHOLD, want):
            return None
        if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * want)
        _fixed_threshold = want
    log.debug("malloc: blocks under %d bytes (a camera's frames) now come from the heap", want)
    return want
