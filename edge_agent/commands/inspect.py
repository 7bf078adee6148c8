"""``edge-agent inspect MODEL``: what is in this .tflite, what its manifest says, and what will run it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click

from edge_agent.errors import EdgeAgentError, ModelError
from edge_agent.manifest import Manifest, file_sha256, load_manifest, manifest_path_for
from edge_agent.runtime.backends import AUTO_ORDER, BACKENDS, available_runtimes, select_runtime
from edge_agent.runtime.config import ModelConfig
from edge_agent.runtime.delegates import EDGETPU_LIBRARY, edgetpu_model_path, load_edgetpu
from edge_agent.runtime.model import check_model_file
from edge_agent.runtime.tensors import op_names, spec_of


def _quant(q: dict | None) -> str:
    return "-" if not q else f"scale={q['scale']:.6g} zero_point={q['zero_point']}"


def _describe(model: Path, runtime: str, delegate: str, task: str | None = None) -> dict[str, Any]:
    check_model_file(model, named_by="the MODEL argument")
    api = select_runtime(runtime)
    try:
        interpreter = api.make_interpreter(str(model), num_threads=1)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{model}: the {api.name} runtime cannot read it ({str(exc).strip()})") from None
    manifest_file = manifest_path_for(model)
    manifest: Manifest | None = None
    manifest_error = None
    if manifest_file.is_file():
        try:
            manifest = load_manifest(manifest_file, verify_sha256=False)
        except ModelError as exc:
            manifest_error = str(exc)
    roles = {o.name: o.role for o in manifest.outputs} if manifest else {}
    guessed: dict[str, Any] | None = None
    if manifest is None and manifest_error is None and task is not None:
        from edge_agent.runtime.model import load_model

        try:  # what the daemon would make of it with only model.task set
            effective = load_model(
                ModelConfig(path=model, runtime=api.name, num_threads=1, task=task)
            ).manifest
            roles = {o.name: o.role for o in effective.outputs}
            pre = effective.preprocess.model_dump() if effective.preprocess else None
            guessed = {
                "task": task,
                "roles": roles,
                "input_kind": effective.inputs[0].kind,
                "preprocess": pre,
            }
        except EdgeAgentError as exc:
            guessed = {"task": task, "error": str(exc)}
    ops = op_names(interpreter)
    info: dict[str, Any] = {
        "model": str(model),
        "size_bytes": model.stat().st_size,
        "sha256": file_sha256(model),
        "inputs": [spec_of(d).model_dump() for d in interpreter.get_input_details()],
        "outputs": [
            {**spec_of(d).model_dump(), "role": roles.get(d["name"])}
            for d in interpreter.get_output_details()
        ],
        "ops": dict(Counter(op for op in ops if op != "DELEGATE")) if ops is not None else None,
        "manifest": manifest.model_dump(by_alias=True, exclude={"inputs", "outputs"}) if manifest else None,
        "manifest_file": str(manifest_file) if manifest_file.is_file() else None,
        "manifest_error": manifest_error,
        "guessed": guessed,
        "runtimes": available_runtimes(),
        "runtime": {"name": api.name, "version": api.version},
    }
    if manifest is not None and manifest_error is None:
        try:  # the same checks the daemon makes: sha256, tensors, quantization
            from edge_agent.runtime.model import load_model

            load_model(ModelConfig(path=model, runtime=api.name, num_threads=1)).close()
        except EdgeAgentError as exc:
            info["manifest_error"] = str(exc)
    if delegate == "edgetpu":
        loaded = load_edgetpu(api)
        variant = edgetpu_model_path(model)
        info["delegate"] = {
            "name": "edgetpu" if loaded.delegate is not None else None,
            "requested": "edgetpu",
            "error": loaded.error,
            "edgetpu_model": str(variant) if variant else None,
        }
    else:
        info["delegate"] = {"name": None, "requested": "none", "error": None, "edgetpu_model": None}
    return info


def _text(info: dict[str, Any]) -> str:
    out = [f"model     {info['model']}  ({info['size_bytes'] / 1024:.0f} KiB, sha256 {info['sha256']})"]
    for kind in ("inputs", "outputs"):
        out.append(f"{kind}:")
        for t in info[kind]:
            role = f"  role={t['role']}" if t.get("role") else ""
            out.append(f"  {t['name']}  {t['shape']}  {t['dtype']}  {_quant(t['quantization'])}{role}")
    m = info["manifest"]
    if m is None:
        out.append("manifest  none: a plain .tflite; give model.task (and labels, preprocess) in the config")
        g = info.get("guessed")
        if g and "error" in g:
            out.append(f"  with task={g['task']}: {g['error']}")
        elif g:
            out.append(
                f"  with task={g['task']}: input kind {g['input_kind']}, "
                f"output roles {json.dumps(g['roles'])}"
            )
            if g["preprocess"]:
                out.append(
                    f"  assumed preprocess: {json.dumps(g['preprocess'])} (set model.preprocess if wrong)"
                )
    else:
        labels = m.get("labels")
        out.append(f"manifest  {info['manifest_file']}")
        out.append(f"  name={m['name']} task={m['task']} mode={m.get('mode')} created={m.get('created')}")
        labels_text = (
            f"{len(labels)} ({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''})"
            if labels
            else "none"
        )
        out.append(f"  labels: {labels_text}")
        if m.get("preprocess"):
            out.append(f"  preprocess: {json.dumps(m['preprocess'])}")
        out.append(f"  postprocess: {json.dumps(m.get('postprocess') or {})}")
        if m.get("evaluation"):
            out.append(f"  evaluation: {json.dumps(m['evaluation'])}")
    if info["manifest_error"]:
        out.append(f"  MISMATCH: {info['manifest_error']}")
    elif m is not None:
        out.append("  checked: sha256, tensor shapes, dtypes and quantization match the model")
    versions = ", ".join(f"{n} {v}" if v else f"{n} (not installed)" for n, v in info["runtimes"].items())
    out.append(
        f"runtime   {info['runtime']['name']} {info['runtime']['version']} will run it "
        f"(installed: {versions})"
    )
    d = info["delegate"]
    if d["requested"] == "edgetpu":
        if d["name"]:
            out.append(
                f"delegate  edgetpu ({EDGETPU_LIBRARY}); "
                f"model: {d['edgetpu_model'] or 'the CPU model (not compiled for the Edge TPU)'}"
            )
        else:
            out.append(f"delegate  edgetpu unavailable, CPU fallback: {d['error']}")
    else:
        out.append("delegate  none (CPU, XNNPACK)")
    if info["ops"] is not None:
        ops = ", ".join(
            f"{name} x{n}" for name, n in sorted(info["ops"].items(), key=lambda kv: (-kv[1], kv[0]))
        )
        out.append(f"ops       {sum(info['ops'].values())}: {ops}")
    else:
        out.append("ops       not reported by this runtime")
    return "\n".join(out)


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--runtime",
    type=click.Choice(["auto", *BACKENDS]),
    default="auto",
    show_default=True,
    help=f"Runtime to read the model with (auto: {', '.join(AUTO_ORDER)}).",
)
@click.option(
    "--delegate",
    type=click.Choice(["none", "edgetpu"]),
    default="none",
    show_default=True,
    help="Also try to load this delegate and say whether it would be used.",
)
@click.option(
    "--task",
    type=click.Choice(["classification", "detection", "regression", "anomaly", "segmentation"]),
    help="For a .tflite without manifest: show the output roles and preprocessing the daemon would use.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def command(model: Path, runtime: str, delegate: str, task: str | None, as_json: bool) -> None:
    """Show MODEL's tensors and quantization, its manifest, and the runtime and delegate that will run it."""
    info = _describe(model, runtime, delegate, task)
    click.echo(json.dumps(info, indent=2) if as_json else _text(info))
    if info["manifest_error"]:
        raise ModelError(info["manifest_error"])
