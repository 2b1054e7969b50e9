"""``metamorphosis``: the command line.

metamorphosis central [--config FILE] [--set key=value ...] [--out DIR]
metamorphosis simulate [--config FILE] [--set key=value ...] [--out DIR]
metamorphosis simulate --resume RUN_DIR [--set federated.rounds=N ...]
metamorphosis deploy {certs,server,device-key,register,unregister,device,prepare-data,run} ...
metamorphosis audit RUN_OR_CHECKPOINT [--out DIR] [--export FILE.npz] [--attacker-samples N]
metamorphosis compare [--config FILE] [--set key=value ...] [--out DIR] [--methods M ...] [--seeds S ...]
                      [--quick] [--sweep KEY=V1,V2 ...]
metamorphosis sweep --config SWEEP.toml [--set key=value ...] [--out DIR] [--search]
metamorphosis export RUN_OR_CHECKPOINT --out DIR [--method M] [--quantize int8] [--samples N]
metamorphosis track RUN_DIR --to {mlflow,tensorboard} [--uri URI]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import get_args

from rich.console import Console
from rich.text import Text

from fl_metamorphosis.config import ConfigError, Method, load_config, preset_overrides
from fl_metamorphosis.environment import DEBUG_ENV

console = Console(stderr=True)  # no file given: each print writes to the sys.stderr of that moment
CHECKOUT = Path(__file__).resolve().parents[1]  # the repository this command runs from, when it is one


def use_checkout(command: str) -> Path:
    """The Flower app folder, with its ``simulations/`` importable; a clear error on an install without it.

    The app is the repository's root: its pyproject.toml names the ServerApp and ClientApp, and ``flwr run``
    ships the folder to the SuperLink and the devices. A wheel installs the library and this command only
    (never generic names such as ``server``), which is all a device needs."""
    if not (CHECKOUT / "simulations" / "simulate.py").is_file():
        raise ConfigError(
            f"`metamorphosis {command}` launches the Flower app, which is the repository's folder: run it from "
            "a clone of the repository set up with `make setup` (this install holds the library and the device "
            "commands only)"
        )
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    return CHECKOUT


def say(line: str, style: str | None = None) -> None:
    """One line for the user on stderr, printed as it is.

    Never read as rich markup or emoji codes: a path or an error may hold ``[x]``, ``[/`` or ``:name:``, which
    markup would swallow, or turn into a MarkupError traceback in place of the message. Never wrapped
    (``soft_wrap``): a console that is not a terminal (CI logs, a pipe) is 80 columns wide to rich, and a
    path or message cut over lines cannot be copied or grepped."""
    console.print(Text(line, style=style or ""), highlight=False, soft_wrap=True)


def say_error(label: str, detail: object) -> None:
    """``label`` in red, then ``detail`` (an error, its message) verbatim, on one line (see ``say``)."""
    line = Text(label, style="red")
    line.append(f" {detail}")
    console.print(line, highlight=False, soft_wrap=True)


def _echo(line: str) -> None:
    """A progress line of a long run (compare, sweep, simulate), verbatim (see ``say``)."""
    say(line)


def _add_track(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--track",
        choices=["mlflow", "tensorboard"],
        help="also log the config, every round and the results to MLflow or TensorBoard (docs/tracking.md); "
        "the same as --set tracking.backend=NAME",
    )


def _with_track(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides, with ``--track``'s."""
    return [*args.overrides, f"tracking.backend={args.track}"] if args.track else args.overrides


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metamorphosis", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    commands = {
        "central": "train universal + MetaMorphosis on one machine, audit both, report",
        "simulate": "federated MetaMorphosis: a Flower simulation of edge devices (flwr run, Ray), audited",
        "compare": "every method x several seeds through the federated pipeline, audited, one table and plots",
    }
    for name, text in commands.items():
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", type=Path, help="TOML experiment file (defaults: the embedded demo)")
        cmd.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one config value, e.g. --set train.epochs=3 (repeatable)",
        )
        cmd.add_argument("--out", type=Path, default=Path(f"runs/{name}"), help=f"run folder (default runs/{name})")
        _add_track(cmd)
    sub.choices["simulate"].add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last complete round, with its own config",
    )
    sub.choices["simulate"].add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="the simulated devices' privacy policy (TOML; docs/privacy.md); default: the run's own config",
    )
    sub.choices["simulate"].add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the devices on this running Ray cluster (its head's GCS port; docs/ray-cluster.md)",
    )
    compare = sub.choices["compare"]
    compare.add_argument(  # the config's names, not fl_metamorphosis.methods: every command would import torch
        "--methods", nargs="+", choices=list(get_args(Method)), help="default: all (with --sweep: metamorphosis)"
    )
    compare.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: 0 1 2")
    compare.add_argument("--quick", action="store_true", help="configs/tiny.toml: 3 devices, 2 rounds (tests)")
    compare.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="e.g. dp_sgd.target_epsilon=2,4,8 (repeatable, one key at a time; method=A,B sweeps the method); "
        "writes sweep.md and frontier.png",
    )
    sweep = sub.add_parser(
        "sweep", help="strategies x settings x partitionings x budgets x attacks x seeds: which wins"
    )
    sweep.add_argument(
        "--config", type=Path, default=Path("configs/sweep.toml"), help="sweep file (configs/sweep.toml)"
    )
    sweep.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override for every cell"
    )
    sweep.add_argument("--out", type=Path, default=Path("runs/sweep"), help="sweep folder (default runs/sweep)")
    sweep.add_argument("--search", action="store_true", help="run the file's [search] study (Optuna) instead")
    _add_track(sweep)
    from .deploy import add_parser as add_deploy_parser

    add_deploy_parser(sub)
    audit = sub.add_parser("audit", help="run every attack on a saved run or checkpoint; export released features")
    audit.add_argument("source", type=Path, help="run folder of central/simulate, or a .ckpt checkpoint")
    audit.add_argument("--out", type=Path, help="where audit.json, report.md and plots go (default SOURCE/audit)")
    audit.add_argument("--export", type=Path, help="also write the held-out released features, labels, images (.npz)")
    audit.add_argument(
        "--attacker-samples",
        type=int,
        help="released training samples the attacker learns on (default: as many as the server saw, federated)",
    )
    audit.add_argument(
        "--held-rounds",
        metavar="K|all",
        help="a simulate run: attack every feature query's rows under its own round's weights instead (all, or K "
        "rounds spread over the run and refined around the worst); writes held_rows.json, held_rows.md, "
        "round_attacks.png",
    )
    export = sub.add_parser("export", help="the trained device part and task heads as ONNX, for the edge runtime")
    export.add_argument("source", type=Path, help="run folder of central/simulate, or a .ckpt checkpoint")
    export.add_argument("--out", type=Path, required=True, help="the export folder (ONNX files, manifest.json)")
    export.add_argument("--method", help="which model of a central run holding several")
    export.add_argument("--quantize", choices=["int8"], help="also int8 models (ONNX Runtime), their accuracy measured")
    export.add_argument(
        "--samples",
        type=int,
        help="test images (and labels) to write as samples.npz (default 64 for the embedded data, 0 for your own)",
    )
    track = sub.add_parser("track", help="log a finished run folder to MLflow or TensorBoard (as --track would have)")
    track.add_argument("run", type=Path, help="a run folder of central or simulate")
    track.add_argument("--to", choices=["mlflow", "tensorboard"], required=True, help="the backend")
    track.add_argument("--uri", help="mlflow: a tracking server (default: mlflow.db beside the run folder)")
    return p


def _track(args: argparse.Namespace) -> int:
    import json

    from fl_metamorphosis.config import build_config
    from fl_metamorphosis.tracking import TrackedRun

    config = args.run / "config.json"
    if not config.is_file():
        raise ConfigError(f"{args.run}: no config.json: pass the run folder of `metamorphosis central` or `simulate`")
    overrides = [f"tracking.backend={args.to}", *([f"tracking.uri={args.uri}"] if args.uri else [])]
    cfg = build_config(json.loads(config.read_text()), overrides)
    central = any(args.run.glob("model_*.ckpt"))
    # resume: a folder tracked before continues its tracked run, and logs only the rows it lacks
    with TrackedRun(args.run, cfg, resume=True, by_method=central and len(cfg.methods) > 1) as tracked:
        pass
    if not tracked.run_id:
        return 1  # the one warning said why
    say(f"{args.run} -> {args.to} run {tracked.run_id} (store: {args.uri or tracked.store})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from fl_metamorphosis.export import export_run

    say(f"exporting {args.source} -> {args.out}", "bold")
    if args.samples is not None and args.samples < 0:
        raise ConfigError(f"--samples {args.samples}: give 0 or more")
    manifest = export_run(args.source, args.out, method=args.method, quantize=args.quantize, samples=args.samples)
    acc = manifest.accuracy
    for task in manifest.tasks:
        if not task.released:
            say(f"  {task.name}: not released (every device withheld it in the run's last round)")
            continue
        line = (
            f"  {task.name}: noise {task.noise_std:g} ({manifest.mechanism}, clip {manifest.clip_norm:g}), "
            f"epsilon {task.epsilon:.2f} per image; accuracy torch {acc['torch'][task.name]['mean']:.3f}, "
            f"onnx {acc['onnx_fp32'][task.name]['mean']:.3f}"
        )
        if "onnx_int8" in acc:
            drop = acc["int8_drop"][task.name]["mean"]
            line += f", int8 {acc['onnx_int8'][task.name]['mean']:.3f} (drop {drop:+.3f})"
        say(line)
    diff = acc["onnx_vs_torch_max_abs_diff"]
    say(f"ONNX vs PyTorch, noise off: max difference {max(diff.values()):.1e}; manifest: {args.out / 'manifest.json'}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from fl_metamorphosis.audit.saved_run import write_audit, write_held_rows_audit

    if args.held_rounds is not None:
        if args.held_rounds != "all" and not (args.held_rounds.isdigit() and int(args.held_rounds) > 0):
            raise ConfigError(f"--held-rounds={args.held_rounds!r}: give 'all' or a positive number of rounds")
        sample = None if args.held_rounds == "all" else int(args.held_rounds)
        out = args.out or args.source / "audit"
        say(f"auditing the rows held from every round of {args.source} -> {out}", "bold")
        write_held_rows_audit(args.source, out, sample)
        print((out / "held_rows.md").read_text())
        return 0

    if args.attacker_samples is not None and args.attacker_samples < 50:
        raise ConfigError(f"--attacker-samples={args.attacker_samples}: give at least 50")
    out = args.out or (args.source if args.source.is_dir() else args.source.parent) / "audit"
    say(f"auditing {args.source} -> {out}", "bold")
    summary = write_audit(args.source, out, args.export, args.attacker_samples)
    print((out / "report.md").read_text())
    if args.export:
        say(f"released features exported to {args.export} ({', '.join(summary['methods'])})")
    return 0


def _compare(args: argparse.Namespace) -> int:
    use_checkout("compare")
    from fl_metamorphosis.deployment.flower_processes import RunFailed
    from simulations.compare import COMPARE_DEFAULTS, TINY_PRESET, compare, parse_sweep, sweep

    quick = preset_overrides(TINY_PRESET) if args.quick else []
    cfg = load_config(args.config, [*COMPARE_DEFAULTS, *quick, *_with_track(args)])
    from fl_metamorphosis.methods import METHODS

    try:
        if args.sweep:
            methods = args.methods or ["metamorphosis"]
            rows = sweep(cfg, args.out, methods, args.seeds[0], parse_sweep(args.sweep), _echo)
            say(f"{len(rows)} sweep runs: {args.out / 'sweep.json'}, {args.out / 'sweep.png'}")
            return 0
        compare(cfg, args.out, args.methods or list(METHODS), args.seeds, _echo)
    except RunFailed as err:
        say_error("a run failed:", f"{err}  (finished runs are kept and reused on the next call)")
        return 1
    print((args.out / "comparison.md").read_text())
    say(f"comparison folder: {args.out}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    use_checkout("simulate")
    from fl_metamorphosis.deployment.flower_processes import RunFailed
    from simulations.simulate import resumed_config, simulate

    if args.resume is not None:
        if args.config is not None:
            raise ConfigError("--resume continues a run with its own config: drop --config (use --set for safe keys)")
        args.out, cfg = args.resume, resumed_config(args.resume, _with_track(args))
    else:
        cfg = load_config(args.config, _with_track(args))
    if args.policy is not None:
        from fl_metamorphosis.privacy.device_policy import POLICY_ENV, DevicePolicy, PolicyError

        try:
            DevicePolicy.load(args.policy)
        except PolicyError as err:
            raise ConfigError(f"--policy: {err}") from None
        os.environ[POLICY_ENV] = str(args.policy.resolve())  # the devices' environment, not the server's config
    fed = cfg.federated
    heading = Text(
        f"{'resuming' if args.resume else 'simulating'} {fed.num_devices} devices, {fed.rounds} rounds, "
        f"{fed.partitioning} partitioning, strategy {fed.strategy.name}",
        style="bold",
    )
    heading.append(
        (f" on the Ray cluster at {args.ray_address}" if args.ray_address else "")
        + f" (Flower log: {args.out / 'flower.log'})"
    )
    console.print(heading, highlight=False, soft_wrap=True)
    try:
        out = simulate(
            cfg,
            args.out,
            echo=_echo,
            resume=args.resume is not None,
            ray_address=args.ray_address,
        )
    except RunFailed as err:
        say_error("simulation failed:", err)
        say(f"finished rounds are checkpointed: continue with `metamorphosis simulate --resume {args.out}`")
        return 1
    report = out / "report.md"
    if report.exists():
        print(report.read_text())
    else:
        say("audit.enabled=false: no privacy figures; per-round metrics in metrics.jsonl")
    say(f"run folder: {out}")
    return 0


def _central(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, _with_track(args))
    # Heavy imports after the config is known to be valid: a typo fails in a blink.
    from fl_metamorphosis.central import run_central
    from fl_metamorphosis.tracking import TrackedRun

    def on_epoch(row: dict) -> None:
        accs = "  ".join(f"{k.removeprefix('test_acc.')} {v:.3f}" for k, v in row.items() if k.startswith("test_acc."))
        eps = f"  eps {row['epsilon']:.2f}" if row.get("epsilon") is not None else ""
        say(
            f"  [{row['method']}] epoch {row['epoch']}/{cfg.train.epochs}  loss {row['train_loss']:.3f}  "
            f"{accs}{eps}  ({row['seconds']:.0f} s)"
        )

    with TrackedRun(args.out, cfg, by_method=len(cfg.methods) > 1):
        summary = run_central(cfg, args.out, on_epoch, on_stage=lambda msg: say(msg, "bold"))
    report = (args.out / "report.md").read_text()
    print(report)
    failed = [c for c in summary["checks"] if not c["passed"]]
    say(
        f"run folder: {args.out}  ({summary['wall_seconds']:.0f} s; "
        f"{len(summary['checks']) - len(failed)}/{len(summary['checks'])} claim checks met)"
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    use_checkout("sweep")
    from fl_metamorphosis.config import build_config
    from simulations.sweep import run_sweep
    from simulations.sweep_config import read_sweep

    sweep_cfg, base = read_sweep(args.config)
    base = build_config(base.model_dump(), _with_track(args))
    if args.search:
        from simulations.search import run_search

        if sweep_cfg.search is None:
            raise ConfigError(f"--search: {args.config} has no [search] table (see configs/sweep.toml)")
        study = run_search(sweep_cfg, base, args.out, _echo)
        say(f"search: best {study['best']} -> {args.out / 'search.md'}")
        return 0
    if not sweep_cfg.block:
        raise ConfigError(f"{args.config}: no [[block]] to sweep (or pass --search for its [search] table)")
    report = run_sweep(sweep_cfg, base, args.out, _echo)
    print((args.out / "sweep.md").read_text())
    return 1 if report["failed"] else 0


class _StderrNow(logging.StreamHandler):
    """The sys.stderr of the moment: a test's capture, a redirected stream."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _show_library_warnings() -> None:
    """The library's warnings (a tracking server that failed, ...) on stderr. ``basicConfig`` cannot do it:
    the library's NullHandler on the root logger (``_third_party.py``) makes it a no-op."""
    lib = logging.getLogger("fl_metamorphosis")
    if not any(isinstance(h, _StderrNow) for h in lib.handlers):
        handler = _StderrNow()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        lib.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    _show_library_warnings()
    try:
        from .deploy import run_deploy

        commands = {
            "simulate": _simulate,
            "central": _central,
            "audit": _audit,
            "compare": _compare,
            "sweep": _sweep,
            "deploy": run_deploy,
            "export": _export,
            "track": _track,
        }
        return commands[args.command](args)
    except ConfigError as err:
        say_error("error:", err)
        return 2
    except KeyboardInterrupt:
        say("interrupted: the run folder keeps what was written so far", "yellow")
        return 130
    except Exception as err:  # a clear line for users; the traceback on request
        if os.environ.get(DEBUG_ENV):
            raise
        say_error("error:", f"{type(err).__name__}: {err}")
        say(f"the run folder keeps what was written so far; set {DEBUG_ENV}=1 for the traceback")
        return 1


if __name__ == "__main__":
    sys.exit(main())
