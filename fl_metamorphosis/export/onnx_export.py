"""``metamorphosis export RUN --out DIR``: a trained run as ONNX files for the edge and the cloud.

The device part is one graph: encoder, the method's split into task features (Cross-SEC for
MetaMorphosis) and the clip of feature DP, so an edge board computes exactly what a training device
released before its noise. The noise is not in the graph: an ONNX graph draws from a generator the
runtime seeds, and noise anyone can regenerate is no noise. The edge runtime (``fl_metamorphosis/edge``)
adds it from the OS CSPRNG. Each task's head is its own graph, for that task's owner in the cloud.

What each task's features leave with is the run's, and never less (``manifest.py``): the configured
noise times the step the devices last released the task at, so a task the release gate had to noise
harder stays noised harder; a task every device withheld in the last round is exported as not released.
Its epsilon per release is accounted here with the run's own accountant (``privacy/feature_noise.py``).

The export is checked before it is written off as done: the ONNX device part against PyTorch with the
noise off, and the whole pipeline's accuracy with noise against the PyTorch model's under the same
release (``verify_export``).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..audit.saved_run import SavedModel, load_saved
from ..config import ConfigError
from ..data import load_dataset
from ..edge.manifest import FORMAT, Manifest, TaskRelease
from ..metrics import read_jsonl
from ..privacy.feature_noise import clip_features, gaussian_epsilon

DEVICE_MODEL = "device.onnx"
PUBLIC_DATA = ("digits", "synthetic")  # embedded or generated: samples of them may travel with an export
OPSET = 17


class DevicePart(nn.Module):
    """Images ``[N, C, H, W]`` -> each task's clipped feature ``[N, T, *feature_shape]`` (no noise)."""

    def __init__(self, generator: nn.Module, clip_norm: float, p: int):
        super().__init__()
        self.generator, self.clip_norm, self.p = generator, clip_norm, p

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features, _ = self.generator(images)
        return clip_features(features, self.clip_norm, self.p)


def _onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> None:
    """One graph with a free batch axis. torch's TorchScript exporter: it needs only ``onnx``, and torch 2.13
    still ships it (it warns that it is deprecated). Its tracer also warns at GroupNorm's check that a batch
    is not a single value, which it records as a constant; that check has no part in the graph's output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def _pick(models: list[SavedModel], method: str | None) -> SavedModel:
    if method is None:
        if len(models) > 1:
            raise ConfigError(f"the run holds {[m.method for m in models]}: pick one with --method")
        return models[0]
    for m in models:
        if m.method == method:
            return m
    raise ConfigError(f"--method {method!r}: the run holds {[m.method for m in models]}")


def _run_folder(source: Path) -> Path:
    if source.is_dir():
        return source
    return source.parent.parent if source.parent.name == "checkpoints" else source.parent


def _rows(run: Path) -> list[dict[str, Any]]:
    return read_jsonl(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []


def last_release_steps(rows: list[dict[str, Any]], tasks: list[str]) -> dict[str, float | None]:
    """Per task, the noise step the devices last released it at in the run's ``metrics.jsonl`` rows (None:
    all withheld); 1.0 for a central run, which has no release gate."""
    rows = [r for r in rows if "released_noise" in r]
    if not rows:
        return dict.fromkeys(tasks, 1.0)
    steps = rows[-1]["released_noise"]
    return {t: (float(steps[t]) if t in steps else None) for t in tasks}


def task_epsilon(mechanism: str, noise_std: float, clip_norm: float, delta: float) -> float:
    """One release of one image's feature of one task (sensitivity 2C, as in training)."""
    if mechanism == "gaussian":
        return gaussian_epsilon(noise_std, 2 * clip_norm, delta)
    return 2 * clip_norm / noise_std


def all_tasks_epsilon(mechanism: str, stds: list[float], clip_norm: float, delta: float) -> float:
    """One release of every released task of one image: Gaussians of stds s_i compose to one Gaussian of
    std (sum 1/s_i^2)^(-1/2); pure Laplace epsilons add."""
    if not stds:
        return 0.0
    if mechanism == "gaussian":
        return gaussian_epsilon(1 / math.sqrt(sum(1 / s**2 for s in stds)), 2 * clip_norm, delta)
    return sum(2 * clip_norm / s for s in stds)


def _run_privacy(run: Path, rows: list[dict[str, Any]], method: str) -> tuple[dict[str, Any], dict[str, float]]:
    """The run's own privacy figures and its last evaluated accuracy, as it wrote them."""
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    figures = summary.get("methods", {}).get(method, {})
    privacy = {
        "dp_sgd": figures.get("dp_sgd"),
        "cross_task_attack": {
            pair: {k: v.get(k) for k in ("accuracy", "chance", "ci95", "attacker")}
            for pair, v in (figures.get("cross_task_attack") or {}).items()
        },
        "randomness": summary.get("randomness"),
    }
    accs = {}
    for row in rows:
        if row.get("method", method) == method:
            accs = {k.removeprefix("test_acc."): v for k, v in row.items() if k.startswith("test_acc.")} or accs
    return privacy, accs


def export_run(
    source: Path,
    out: Path,
    *,
    method: str | None = None,
    quantize: str | None = None,
    samples: int | None = None,
) -> Manifest:
    """Write ``device.onnx``, ``head_<task>.onnx`` and ``manifest.json`` into ``out``, and ``samples.npz`` (a few
    test images and their labels, to try the edge runtime on); with ``quantize="int8"`` also the int8 models.

    Keyword-only arguments:
        method: which model of a ``central`` run folder holding several.
        quantize: ``"int8"`` for ONNX Runtime's dynamic int8 quantisation of every graph, or None.
        samples: how many test images go into samples.npz. By default 64 for the embedded public data (digits,
            synthetic) and none for a user's own: an export travels to boards and task owners, and a
            dataset's images are not theirs to receive unless the user says so.
    """
    source = Path(source)
    model = _pick(load_saved(source), method)
    cfg, fdp = model.cfg, model.cfg.feature_dp
    if not fdp.enabled:
        raise ConfigError(
            f"{source}: the run's feature_dp is off, so its features would leave a device with no noise: export a "
            "run trained with feature_dp.enabled=true"
        )
    split = load_dataset(cfg.data, cfg.train.seed)
    test = split.test
    run = _run_folder(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    clip_p = 2 if fdp.mechanism == "gaussian" else 1
    example = test.images[:2]
    _onnx(DevicePart(model.generator, fdp.clip_norm, clip_p), example, out / DEVICE_MODEL, "images", "features")
    feature_shape = tuple(model.generator.feature_shape)
    rows = _rows(run)
    steps = last_release_steps(rows, test.task_names)
    delta = fdp.delta if fdp.mechanism == "gaussian" else 0.0
    tasks = []
    for spec, head in zip(test.tasks, model.heads, strict=True):
        file = f"head_{spec.name}.onnx"
        _onnx(head, torch.zeros(2, *feature_shape), out / file, "feature", "logits")
        step = steps[spec.name]
        std = None if step is None else fdp.noise_std * max(1.0, step)
        eps = None if std is None else task_epsilon(fdp.mechanism, std, fdp.clip_norm, fdp.delta)
        tasks.append(TaskRelease(spec.name, spec.num_classes, file, std is not None, std, step, eps))
    privacy, run_accuracy = _run_privacy(run, rows, model.method)
    stds = [t.noise_std for t in tasks if t.released]
    privacy["feature_release"] = {
        "per_task_epsilon": {t.name: t.epsilon for t in tasks},
        "all_tasks_epsilon": all_tasks_epsilon(fdp.mechanism, stds, fdp.clip_norm, fdp.delta),
        "delta": delta,
        "sensitivity": 2 * fdp.clip_norm,
        "accountant": "dp-accounting PLD (Gaussian mechanism)" if fdp.mechanism == "gaussian" else "pure DP",
        "note": "one release of one image; every call of release() is a new release, and releases of one image "
        "compose (k releases of a Gaussian task feature are one release at std / sqrt(k))",
    }
    manifest = Manifest(
        format=FORMAT,
        method=model.method,
        input_shape=tuple(test.image_shape),
        uint8_scale=1 / 16 if cfg.data.name == "digits" else 1 / 255,
        feature_shape=feature_shape,
        device_model=DEVICE_MODEL,
        mechanism=fdp.mechanism,
        clip_norm=fdp.clip_norm,
        delta=delta,
        tasks=tuple(tasks),
        privacy=privacy,
        accuracy={"run": run_accuracy},
        source={"run": str(run), "checkpoint": str(model.file)},
    )
    if quantize == "int8":
        from .int8 import quantize_export

        manifest = quantize_export(out, manifest)
    elif quantize is not None:
        raise ConfigError(f"--quantize {quantize!r}: the one quantisation is int8")
    if samples is None:
        samples = 64 if cfg.data.name in PUBLIC_DATA else 0
    if samples > 0:
        n = min(samples, len(test))
        np.savez_compressed(
            out / "samples.npz",
            images=test.images[:n].numpy(),
            labels=test.labels[:n].numpy(),
            task_names=np.array(test.task_names),
        )
    from .verify import verify_export

    manifest.write(out)  # the runtime that verifies the export reads it as a device would
    manifest = verify_export(out, manifest, model, test)
    manifest.write(out)
    return manifest
