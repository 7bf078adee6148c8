"""One daemon config with a pipeline of each task Home Assistant discovery knows, for the discovery tests.

- ``front.door``: the colour classifier on a looping video that shows red, then blue (labels alternate);
- ``yard``: the constant YOLO head (a person and a car in every frame) on the same video;
- ``vib``: the regression model (load in kg, temperature in °C) on a followed CSV file of samples;
- ``pump``: the autoencoder (anomaly) on another followed CSV file.

Device ``pi.kitchen`` and pipeline ``front.door`` are valid edge-agent names but not Home Assistant object
ids: discovery turns them into ``pi_kitchen`` and ``front_door``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.daemon_harness import write_config

DEVICE = "pi.kitchen"
NODE = "pi_kitchen"
# Each frame is one colour for COLOUR_RUN frames (BGR: red, then blue), at VIDEO_FPS: the label changes
# every second, slower than Home Assistant is polled and faster than the test's patience.
COLOURS = {"red": (0, 0, 255), "blue": (255, 0, 0)}
COLOUR_RUN = 10
VIDEO_FPS = 10.0

# discovery config topics (component, object) of each pipeline, as the README lists them
DIAGNOSTICS = ["fps", "invoke_p99", "skipped", "model_sha", "last_error"]
DEVICE_OBJECTS = [("sensor", "outbox_depth"), ("sensor", "outbox_dropped")]
OBJECTS = {
    "front.door": [("sensor", "front_door_label"), ("sensor", "front_door_score")],
    "yard": [("sensor", "yard_person_count"), ("binary_sensor", "yard_person_detected"),
             ("sensor", "yard_car_count"), ("binary_sensor", "yard_car_detected")],
    "vib": [("sensor", "vib_load"), ("sensor", "vib_temperature")],
    "pump": [("binary_sensor", "pump_anomaly"), ("sensor", "pump_anomaly_score")],
}  # fmt: skip
for _name, _objects in OBJECTS.items():
    _objects += [("sensor", f"{_name.replace('.', '_')}_{d}") for d in DIAGNOSTICS]
    _objects.append(("binary_sensor", f"{_name.replace('.', '_')}_source_connected"))


def config_topics(pipelines: list[str], prefix: str = "homeassistant") -> set[str]:
    """The discovery config topics of the device with these pipelines."""
    objects = DEVICE_OBJECTS + [o for name in pipelines for o in OBJECTS[name]]
    return {f"{prefix}/{component}/{NODE}/{obj}/config" for component, obj in objects}


def entity_ids(pipelines: list[str]) -> set[str]:
    objects = DEVICE_OBJECTS + [o for name in pipelines for o in OBJECTS[name]]
    return {f"{component}.{NODE}_{obj}" for component, obj in objects}


def render_colour_video(path: Path, loops: int = 2, size: int = 32) -> Path:
    """A lossless (FFV1) .avi: COLOUR_RUN frames of each colour of COLOURS, ``loops`` times."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), VIDEO_FPS, (size, size))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write FFV1 to {path}")
    try:
        for _ in range(loops):
            for bgr in COLOURS.values():
                for _ in range(COLOUR_RUN):
                    writer.write(np.full((size, size, 3), bgr, np.uint8))
    finally:
        writer.release()
    return path


def write_samples(path: Path, count: int = 4000, seed: int = 4) -> Path:
    """One column of values in 0..1, one per line (a followed file: the pipeline waits for more)."""
    values = np.random.default_rng(seed).random(count)
    path.write_text("".join(f"{v:.4f}\n" for v in values))
    return path


def pipelines(folder: Path, models: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """Pipeline configs by name; ``models``: name -> TinyModel (color_int8, yolo_float32, regression_int8,
    autoencoder_int8 for front.door, yard, vib, pump)."""
    video = folder / "colours.avi"
    if not video.exists():
        render_colour_video(video)
    camera = {"type": "camera", "url": str(video), "loop": True, "fps": VIDEO_FPS}
    samples = str(write_samples(folder / "samples.csv"))
    sensor = {"type": "file", "path": samples, "follow": True, "rate_hz": 40.0}
    every = {
        "front.door": {"source": camera},
        "yard": {"source": {**camera, "fps": 2.0}},
        "vib": {"source": sensor, "window": {"size": 6, "hop": 6}},
        "pump": {"source": sensor, "window": {"size": 8, "hop": 8}},
    }
    return [{"name": n, **every[n], "model": {"path": str(models[n].path)}} for n in names]


def ha_config(
    path: Path, broker: Any, models: dict[str, Any], names: list[str], **homeassistant: Any
) -> Path:
    """A daemon config with discovery on (and ``homeassistant`` overrides) for pipelines ``names``."""
    return write_config(
        path,
        broker,
        pipelines(path.parent, models, names),
        device_id=DEVICE,
        homeassistant={"discovery": True, **homeassistant},
    )
