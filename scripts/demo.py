"""The edge-agent demo: the whole product, end to end, on this machine.

Train a digits CNN (scikit-learn's bundled digits, no download), quantize it to int8 with ``edge-convert``
(calibration + evaluation + accuracy gate), render a video of held-out digits with known ground truth,
run ``edge-agent run`` on it, subscribe like any MQTT client would, and print each result as it arrives
with a running accuracy. Everything it starts, it stops. A second run reuses what the first one built.

Run it through ``scripts/demo`` (which sets up the venv); ``python scripts/demo.py --help`` for options.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
DEVICE_ID = "demo"
PIPELINE = "digits"


def say(text: str) -> None:
    click.secho(text, bold=True, err=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class PrivateBroker:
    """A mosquitto of our own on loopback, for machines where no broker answers at the configured address."""

    def __init__(self, work: Path, port: int) -> None:
        self.port = port
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise click.ClickException("mosquitto is not installed: sudo apt-get install mosquitto")
        conf = self.work / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false"]
        if os.geteuid() == 0:
            lines.append("user root")  # as root, mosquitto drops to 'mosquitto', which cannot read our files
        conf.write_text("\n".join(lines) + "\n")
        log = (self.work / "mosquitto.log").open("wb")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not broker_answers("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"mosquitto did not start; see {self.work / 'mosquitto.log'}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def train(work: Path) -> Path:
    from converter import examples, quiet

    model = work / "digits.keras"
    examples.write_digits_data(work)
    if model.exists():
        say(f"[1/5] Reusing the trained digits CNN: {model}")
        return model
    say("[1/5] Training a small CNN on scikit-learn's digits (offline, a few seconds)")
    t0 = time.monotonic()
    quiet.set_verbose(False)
    with quiet.captured_fds():  # TensorFlow's C++ start-up lines (oneDNN, absl) are not for the user
        examples.train_digits(model)
    click.echo(f"      trained in {time.monotonic() - t0:.1f} s -> {model}")
    return model


def quantize(work: Path, keras_model: Path) -> Path:
    tflite = work / "digits.tflite"
    manifest = work / "digits.json"
    if tflite.exists() and manifest.exists() and tflite.stat().st_mtime >= keras_model.stat().st_mtime:
        say(f"[2/5] Reusing the int8 model: {tflite}")
        evaluation = json.loads(manifest.read_text()).get("evaluation") or {}
        if evaluation:
            click.echo(
                "      from its manifest: "
                + ", ".join(f"{k}={v}" for k, v in evaluation.items() if not isinstance(v, (dict, list)))
            )
        return tflite
    say("[2/5] Quantizing to full-integer int8 with edge-convert (calibration + accuracy gate)")
    cmd = [
        str(Path(sys.executable).with_name("edge-convert")),
        "quantize",
        str(keras_model),
        "-o",
        str(tflite),
        "--calib",
        str(work / "train.npz"),
        "--eval",
        str(work / "test.npz"),
        "--labels",
        str(work / "labels.txt"),
        "--color",
        "gray",
        "--resize",
        "stretch",
        "--scale",
        repr(1 / 255),
        "--max-accuracy-drop",
        "1.0",
    ]
    click.echo("      $ edge-convert " + " ".join(cmd[1:]).replace(str(work) + "/", ""))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"edge-convert failed with exit code {done.returncode}")
    return tflite


def render(work: Path, frames: int) -> tuple[Path, list[str]]:
    import numpy as np

    from converter import examples

    video = work / f"digits-{frames}.avi"
    truth_file = video.with_suffix(".labels.txt")
    if video.exists() and truth_file.exists():
        say(f"[3/5] Reusing the demo video: {video.name} ({frames} held-out digits)")
        return video, truth_file.read_text().split()
    say(f"[3/5] Rendering {frames} held-out digits into a video with known ground truth")
    split = examples.load_digits_split()
    index = np.arange(frames) % len(split.x_test)
    truth = examples.render_digits_video(video, split.x_test[index], fps=30, labels=split.y_test[index])
    return video, truth


def write_config(work: Path, tflite: Path, video: Path, host: str, port: int, fps: float | None) -> Path:
    source: dict[str, object] = {"type": "camera", "url": str(video)}
    if fps:
        source["fps"] = fps
    config = {
        "device_id": DEVICE_ID,
        "mqtt": {"host": host, "port": port, "topic_prefix": "edge", "stats_interval_s": 2},
        "state_dir": str(work / "state"),
        "pipelines": [
            {
                "name": PIPELINE,
                "source": source,
                "model": {"path": str(tflite), "num_threads": 1},
                "publish": {"qos": 1, "policy": "every"},
            }
        ],
    }
    path = work / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def watch(
    config: Path, truth: list[str], host: str, port: int, work: Path, timeout: float
) -> tuple[int, int]:
    """Start the daemon, subscribe like any client, print results live; return (results, correct)."""
    import paho.mqtt.client as mqtt

    inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"demo-viewer-{os.getpid()}")
    sub.on_connect = lambda c, *_: c.subscribe(f"edge/{DEVICE_ID}/#", qos=1)
    sub.on_message = lambda c, u, m: inbox.put((m.topic, m.payload))
    sub.connect(host, port)
    sub.loop_start()

    log_path = work / "edge-agent.log"
    agent_cmd = [str(Path(sys.executable).with_name("edge-agent")), "run", str(config)]
    click.echo(f"      $ edge-agent run {config.name}    (log: {log_path})")
    click.echo(f"      subscribed to edge/{DEVICE_ID}/# on {host}:{port}\n")
    header = ("seq", "frame", "truth", "model", "score")
    click.echo("      " + " ".join(f"{h:>5}" for h in header) + f"{'accuracy':>23} {'latency':>9}")
    with log_path.open("wb") as log:
        agent = subprocess.Popen(agent_cmd, stdout=log, stderr=subprocess.STDOUT)
    seen: dict[int, bool] = {}
    correct = 0
    deadline = time.monotonic() + timeout
    last_message = time.monotonic()
    try:
        while time.monotonic() < deadline:
            try:
                topic, payload = inbox.get(timeout=0.2)
            except queue.Empty:
                if agent.poll() is not None and time.monotonic() - last_message > 2.0:
                    break
                continue
            last_message = time.monotonic()
            if topic.endswith("/status"):
                click.echo(f"      status: {payload.decode()}")
                continue
            if not topic.endswith("/result"):
                continue
            result = json.loads(payload)
            seq, frame = result["seq"], result.get("frame")
            if seq in seen or frame is None or frame >= len(truth):
                continue  # QoS 1 may deliver a result twice, with the same seq
            ok = truth[frame] == str(result.get("label"))
            seen[seq] = ok
            correct += ok
            n = len(seen)
            label, score = result.get("label"), result.get("score", 0.0)
            mark = click.style(" ok " if ok else "MISS", fg="green" if ok else "red")
            latency = result.get("latency_ms", {}).get("total", 0.0)
            click.echo(
                f"      {seq:>5} {frame:>5} {truth[frame]:>5} {label!s:>5} {score:>6.2f} {mark}  "
                f"{100 * correct / n:>6.1f}% ({correct}/{n}) {latency:>7.2f} ms"
            )
        else:
            click.echo("      timed out waiting for the daemon; stopping it")
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
        sub.loop_stop()
        sub.disconnect()
    if agent.returncode not in (0, -signal.SIGTERM):
        click.echo(log_path.read_text()[-2000:], err=True)
        raise click.ClickException(f"edge-agent exited with {agent.returncode}; see {log_path}")
    return len(seen), correct


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="60 frames instead of 300 (CI smoke run).")
@click.option(
    "--frames", type=click.IntRange(1, 100_000), default=None, help="How many held-out digits to show."
)
@click.option(
    "--fps",
    type=float,
    default=30.0,
    show_default=True,
    help="Replay speed of the video (0: as fast as possible).",
)
@click.option(
    "--broker",
    default=os.environ.get("EDGE_AGENT_DEMO_BROKER", "127.0.0.1:1883"),
    show_default=True,
    help="MQTT broker HOST:PORT; a private mosquitto is started there when none answers.",
)
@click.option(
    "--work",
    type=click.Path(path_type=Path),
    default=ROOT / "demo-out",
    show_default=True,
    help="Where models, video and state go (reused by the next run).",
)
@click.option(
    "--min-accuracy",
    type=float,
    default=0.85,
    show_default=True,
    help="Exit non-zero when the running accuracy ends below this.",
)
def main(quick: bool, frames: int | None, fps: float, broker: str, work: Path, min_accuracy: float) -> None:
    """Train, quantize, and run a digits model end to end, showing the results arriving over MQTT."""
    started = time.monotonic()
    frames = frames or (60 if quick else 300)
    host, _, port_text = broker.rpartition(":")
    if not host or not port_text.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {broker!r}", param_hint="--broker")
    port = int(port_text)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    keras_model = train(work)
    tflite = quantize(work, keras_model)
    video, truth = render(work, frames)

    private = None
    if broker_answers(host, port):
        say(f"[4/5] Using the MQTT broker that answers at {host}:{port}")
    else:
        say(f"[4/5] No broker answers at {host}:{port}: starting a private mosquitto there")
        if host not in ("127.0.0.1", "localhost"):
            raise click.ClickException(
                f"no broker at {host}:{port}, and a private one can only run on 127.0.0.1"
            )
        private = PrivateBroker(work, port)
        private.start()
    try:
        shutil.rmtree(work / "state", ignore_errors=True)  # a fresh outbox and seq: the demo counts from 1
        config = write_config(work, tflite, video, host, port, fps or None)
        say("[5/5] Running edge-agent on the video; results as an MQTT subscriber sees them:")
        results, correct = watch(config, truth, host, port, work, timeout=max(60.0, 3 * frames / (fps or 30)))
    finally:
        if private:
            private.stop()
    accuracy = correct / results if results else 0.0
    click.echo()
    say(
        f"Done in {time.monotonic() - started:.1f} s: {results} results arrived over MQTT "
        f"for {frames} frames, accuracy {100 * accuracy:.1f}% against the ground truth."
    )
    click.echo(f"Model, video, config and logs are in {work}; run again to reuse them.")
    if results == 0:
        raise click.ClickException("no results arrived; see the edge-agent log above")
    if accuracy < min_accuracy:
        raise click.ClickException(f"accuracy {accuracy:.3f} is below --min-accuracy {min_accuracy}")


if __name__ == "__main__":
    main()
