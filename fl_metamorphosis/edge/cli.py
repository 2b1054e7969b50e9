"""``metamorphosis-edge``: the edge runtime's two commands, one for each side (no torch needed).

metamorphosis-edge release EXPORT --images FILE --out RELEASED.npz [--task T] [--int8] [--threads N]
                          [--noise-std TASK=STD]
metamorphosis-edge predict EXPORT --features RELEASED.npz [--labels FILE] [--out PREDICTIONS.json] [--int8]

``release`` runs on the device: images (``.npy``, or ``.npz`` with an ``images`` array; uint8 pixels or
floats in [0, 1]) in, one noised feature array per released task out (``features_<task>``). ``predict``
runs in the cloud: each task's head on its own features; with ``--labels`` (an ``.npz`` with ``labels``
and ``task_names``, as ``samples.npz`` of an export) it also prints each task's accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .manifest import ManifestError
from .runtime import CloudHeads, EdgeDevice


def _read_array(path: Path, key: str) -> np.ndarray:
    if not path.is_file():
        raise ManifestError(f"{path}: no such file")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with np.load(path, allow_pickle=False) as data:
        if key not in data:
            raise ManifestError(f"{path}: no {key!r} array (it holds {sorted(data.files)}): pass --key NAME")
        return data[key]


def _noise_overrides(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value) if sep else float("nan")
        except ValueError:
            out[name] = float("nan")
        if not out[name] > 0:
            raise ManifestError(f"--noise-std {item!r}: give TASK=STD with STD > 0, e.g. --noise-std left=0.5")
    return out


def _release(args: argparse.Namespace) -> int:
    device = EdgeDevice(args.export, int8=args.int8, threads=args.threads, noise_std=_noise_overrides(args.noise_std))
    images = _read_array(args.images, args.key)
    released = device.release(images, args.task or None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **{f"features_{t}": f for t, f in released.items()})
    m = device.manifest
    for task in m.tasks:
        if task.name in released:
            std = device.noise[task.name]
            print(f"{task.name}: {len(images)} features, {m.mechanism} noise {std:g}, clip {m.clip_norm:g}")
        elif not task.released:
            print(f"{task.name}: not released (every device withheld it in the run's last round)")
    print(f"released -> {args.out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    cloud = CloudHeads(args.export, int8=args.int8, threads=args.threads)
    if not args.features.is_file():
        raise ManifestError(f"{args.features}: no such file")
    result: dict[str, dict] = {}
    labels = names = None
    if args.labels is not None:
        labels = _read_array(args.labels, "labels")
        names = [str(n) for n in _read_array(args.labels, "task_names")]
    with np.load(args.features, allow_pickle=False) as data:
        for key in sorted(k for k in data.files if k.startswith("features_")):
            task = key.removeprefix("features_")
            pred = cloud.predict(task, data[key])
            result[task] = {"predictions": pred.tolist()}
            line = f"{task}: {len(pred)} predictions"
            if labels is not None and task in names:
                truth = labels[: len(pred), names.index(task)]
                result[task]["accuracy"] = float((pred == truth).mean())
                line += f", accuracy {result[task]['accuracy']:.3f}"
            print(line)
    if not result:
        raise ManifestError(f"{args.features}: no features_<task> arrays: pass what `metamorphosis-edge release` wrote")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result) + "\n")
        print(f"predictions -> {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metamorphosis-edge", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    release = sub.add_parser("release", help="on the device: images -> each task's noised feature")
    release.add_argument("export", type=Path, help="the folder `metamorphosis export` wrote")
    release.add_argument("--images", type=Path, required=True, help=".npy, or .npz with an images array")
    release.add_argument("--key", default="images", help="the array's name in an .npz (default images)")
    release.add_argument("--out", type=Path, required=True, help="where the released features go (.npz)")
    release.add_argument(
        "--noise-std", action="append", default=[], metavar="TASK=STD", help="more noise for a task (never less)"
    )
    release.add_argument(
        "--task", action="append", default=[], help="release only this task (repeatable): one file per task owner"
    )
    predict = sub.add_parser("predict", help="in the cloud: each task's head on its released features")
    predict.add_argument("export", type=Path, help="the folder `metamorphosis export` wrote")
    predict.add_argument("--features", type=Path, required=True, help="the .npz `release` wrote")
    predict.add_argument("--labels", type=Path, help="an .npz with labels and task_names (e.g. samples.npz)")
    predict.add_argument("--out", type=Path, help="write the predictions (and accuracies) as JSON")
    for cmd in (release, predict):
        cmd.add_argument("--int8", action="store_true", help="the int8 models (an export with --quantize int8)")
        cmd.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.threads < 1:
            raise ManifestError(f"--threads {args.threads}: give at least 1")
        return _release(args) if args.command == "release" else _predict(args)
    except (ManifestError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
