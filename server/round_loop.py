"""The federated round loop (ServerApp side) over the library: train, aggregate, query, fit heads, log.

One round: the strategy samples devices and builds the train messages (global encoder + Cross-SEC
weights, the frozen heads, the experiment); replies are checked (``server/replies.py``) and only valid,
within-budget updates are aggregated, by the strategy's own rule. The devices that answered are then
asked for released task features; head t is trained on task t's features only. The global model is
evaluated on the server's held-out set, a metrics row and a checkpoint are written as the round ends.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fl_metamorphosis.audit import AttackData, audit_model, label_only_floor
from fl_metamorphosis.config import ExperimentConfig
from fl_metamorphosis.data import load_dataset
from fl_metamorphosis.federated.device import joint_state, split_state
from fl_metamorphosis.federated.server_heads import train_head
from fl_metamorphosis.fl.partition import federated_training_pairs
from fl_metamorphosis.fl.records import config_record
from fl_metamorphosis.metrics import (
    JsonlWriter,
    plot_attacks,
    plot_reconstruction_grid,
    plot_rounds,
    render_report,
    write_json,
)
from fl_metamorphosis.model import FeatureGenerator, build_heads
from fl_metamorphosis.training import TrainedModel, evaluate, method_feature_dp
from fl_metamorphosis.training.central import (
    SUMMARY_VERSION,
    machine_description,
    method_summary,
    randomness_summary,
)

from .device_privacy import PrivacyLedger
from .replies import sort_replies
from .strategies import build_strategy

REPLY_TIMEOUT_S = 3600.0


def _query_features(
    grid: Grid, nodes: list[int], arrays: ArrayRecord, config: ConfigRecord, rnd: int, ledger: PrivacyLedger
):
    """Ask ``nodes`` for released features; return per task (features, labels), concatenated. Each reply's
    release counts go to the ledger."""
    messages = [
        Message(
            content=RecordDict({"arrays": arrays, "config": config}),
            message_type="query.features",
            dst_node_id=node,
            group_id=f"features-{rnd}",
        )
        for node in nodes
    ]
    per_task: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for reply in grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_S):
        if reply.has_error():
            print(f"  features: node {reply.metadata.src_node_id} failed: {reply.error.reason}", flush=True)
            continue
        metrics = reply.content.metric_records.get("metrics")
        if metrics is not None and "releases-max" in metrics:
            ledger.record_releases(
                int(metrics["device"]), int(metrics["releases-max"]), int(metrics.get("num-examples", 0))
            )
        for name, record in reply.content.array_records.items():
            if name.startswith("task."):
                feats, labels = per_task.setdefault(name.removeprefix("task."), ([], []))
                feats.append(torch.from_numpy(record["features"].numpy()))
                labels.append(torch.from_numpy(record["labels"].numpy()))
    return {t: (torch.cat(f), torch.cat(y)) for t, (f, y) in per_task.items() if f}


def _fit_heads(heads, tasks: list[str], received, cfg: ExperimentConfig, rnd: int) -> None:
    for t, name in enumerate(tasks):
        if name in received:  # head t sees task t's features only
            feats, labels = received[name]
            train_head(
                heads[t], feats, labels.long(), cfg.federated.head_epochs, cfg.train.head_lr, cfg.train.seed + rnd
            )


def run_federated(grid: Grid, cfg: ExperimentConfig, out: Path, audit: bool = True) -> dict[str, Any]:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    torch.manual_seed(cfg.train.seed)
    method = cfg.methods[-1]
    split = load_dataset(cfg.data, cfg.train.seed)  # the server uses its held-out test set only
    tasks = split.test.task_names
    num_classes = [t.num_classes for t in split.test.tasks]
    generator = FeatureGenerator(method, split.test.image_shape, len(tasks), cfg.model, num_classes)
    heads = build_heads(generator.feature_shape, [t.num_classes for t in split.test.tasks], cfg.model)
    strategy = build_strategy(cfg.federated)
    metrics = JsonlWriter(out / "metrics.jsonl")
    feature_dp = method_feature_dp(method, cfg)
    all_nodes = sorted(grid.get_node_ids())
    history: list[dict[str, Any]] = []
    ledger = PrivacyLedger(cfg.dp_sgd.delta)
    audits = JsonlWriter(out / "audits.jsonl")  # interim audits (federated.audit_every)
    cache: dict[str, Any] = {}

    def attack() -> AttackData:
        # The attacker learns from at least as many released rows as the server has received so far.
        rows = max(cfg.audit.attacker_samples, ledger.rows_received)
        if cache.get("attack_rows") != rows:
            # members for the membership attack: the devices' own training pairs
            cache["attack"] = AttackData.draw(split, cfg.audit, cfg.train.seed, rows, federated_training_pairs(cfg))
            cache["attack_rows"], cache["floors"] = rows, None
        return cache["attack"]

    def floors() -> dict[str, float]:
        data = attack()
        if cache.get("floors") is None:
            cache["floors"] = label_only_floor(data, cfg.audit, cfg.train.seed)
        return cache["floors"]

    # Round 0: heads learn from the initial encoder's features, so the first local round has useful heads.
    _fit_heads(
        heads,
        tasks,
        _query_features(
            grid,
            all_nodes,
            ArrayRecord(joint_state(generator, heads)),
            config_record(cfg, **{"server-round": 0}),
            0,
            ledger,
        ),
        cfg,
        0,
    )

    for rnd in range(1, cfg.federated.rounds + 1):
        t0 = time.perf_counter()
        arrays = ArrayRecord(joint_state(generator, heads))  # the heads travel with the encoder
        messages = list(strategy.configure_train(rnd, arrays, config_record(cfg), grid))
        replies = sort_replies(grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_S), joint_state(generator, heads))
        ledger.record(replies)
        for node, reason in replies.rejected.items():
            print(f"  round {rnd}: rejected reply of node {node}: {reason}", flush=True)
        aggregated = len(replies.valid) >= cfg.federated.min_train_devices
        if aggregated:
            new_arrays, _ = strategy.aggregate_train(rnd, replies.valid)
            if new_arrays is not None:
                gen_w, head_w = split_state(new_arrays.to_torch_state_dict())
                generator.load_state_dict(gen_w)
                heads.load_state_dict(head_w)  # unchanged when the devices keep them frozen
        else:
            print(
                f"  round {rnd}: only {len(replies.valid)} valid updates (< federated.min_train_devices="
                f"{cfg.federated.min_train_devices}): not aggregated",
                flush=True,
            )
        answered = [m.metadata.src_node_id for m in replies.valid]
        received = _query_features(
            grid,
            answered or all_nodes,
            ArrayRecord(joint_state(generator, heads)),
            config_record(cfg, **{"server-round": rnd}),
            rnd,
            ledger,
        )
        _fit_heads(heads, tasks, received, cfg, rnd)
        accuracy = evaluate(generator, heads, split.test, feature_dp, cfg.train.seed + rnd)
        row = {
            "method": method,
            "round": rnd,
            "sampled": len(messages),
            "answered": len(replies.valid),
            "declined": len(replies.declined),
            "rejected": len(replies.rejected),
            "aggregated": aggregated,
            **{f"test_acc.{k}": v for k, v in accuracy.items()},
            "epsilon_max": ledger.max_epsilon,
            "epsilon_mean": ledger.mean_epsilon,
            "releases_per_pair_max": ledger.max_releases_per_pair,
            "feature_rows_received": ledger.rows_received,
            "seconds": time.perf_counter() - t0,
        }
        metrics.write(row)
        history.append(row)
        torch.save(
            {
                "round": rnd,
                "method": method,
                "generator": generator.state_dict(),
                "heads": heads.state_dict(),
                "config": cfg.model_dump(),
            },
            out / "checkpoints" / f"round_{rnd:03d}.pt",
        )
        every = cfg.federated.audit_every
        if audit and cfg.audit.enabled and every and rnd % every == 0 and rnd < cfg.federated.rounds:
            interim = TrainedModel(method, generator, heads, feature_dp)
            figures, _ = audit_model(
                interim, attack(), cfg.audit, floors(), cfg.train.seed, ledger.max_releases_per_pair
            )
            audits.write({"round": rnd, **{k: figures[k] for k in ("tasks", "cross_task_attack", "reconstruction")}})
        accs = "  ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
        print(
            f"[round {rnd}/{cfg.federated.rounds}] devices sampled {row['sampled']}, answered {row['answered']}, "
            f"declined {row['declined']}, rejected {row['rejected']} | {accs} | epsilon max "
            f"{row['epsilon_max']:.2f} mean {row['epsilon_mean']:.2f} | releases per pair max "
            f"{row['releases_per_pair_max']} | {row['seconds']:.1f} s",
            flush=True,
        )

    # Federated evaluation of the final model on the devices' own held-out pairs (weighted by their size).
    evaluate_messages = strategy.configure_evaluate(
        cfg.federated.rounds, ArrayRecord(joint_state(generator, heads)), config_record(cfg), grid
    )
    local = strategy.aggregate_evaluate(
        cfg.federated.rounds, grid.send_and_receive(evaluate_messages, timeout=REPLY_TIMEOUT_S)
    )
    local_accuracy = {
        k.removeprefix("accuracy."): float(v) for k, v in (local or {}).items() if k.startswith("accuracy.")
    }
    print(f"device-side evaluation (local test pairs): {local_accuracy}", flush=True)

    model = TrainedModel(method, generator, heads, feature_dp, history, wall_seconds=time.perf_counter() - started)
    devices = ledger.devices()
    model.dp_sgd = {
        "enabled": cfg.dp_sgd.enabled,
        "epsilon": ledger.max_epsilon,  # the worst device: budgets compose per device, not on average
        "epsilon_mean": ledger.mean_epsilon,
        "delta": cfg.dp_sgd.delta,
        "budget": cfg.federated.device_epsilon_budget,
        "devices_reporting": len(devices),
        "accountant": cfg.dp_sgd.accountant,
        "epsilon_dp_accounting_max": max((d["epsilon_dp_accounting"] for d in devices.values()), default=0.0),
        "epsilon_max_relative_difference": ledger.max_relative_difference(devices),
    }
    if not (audit and cfg.audit.enabled):  # rounds only (tests of the bookkeeping, timing runs)
        write_json(
            out / "summary.json",
            {
                "command": "simulate",
                "history": history,
                "audited": False,
                "server_wall_seconds": time.perf_counter() - started,
            },
        )
        return {"history": history}
    print(
        f"auditing the final model: {ledger.rows_received} released rows received, most releases of one pair "
        f"{ledger.max_releases_per_pair}",
        flush=True,
    )
    attack_data = attack()
    k = ledger.max_releases_per_pair
    figures, recons = audit_model(model, attack_data, cfg.audit, floors(), cfg.train.seed, k)
    figures["attacker"]["server_saw_releases"] = ledger.rows_received
    method_figures = method_summary(model, figures, len(tasks), releases_per_pair=k)
    summary = {
        "summary_version": SUMMARY_VERSION,
        "command": "simulate",
        "machine": machine_description(),
        "tasks": tasks,
        "data": {"name": cfg.data.name, "train": cfg.data.train_pairs, "test": len(split.test)},
        "methods": {method: method_figures},
        "federated": {
            "strategy": cfg.federated.strategy.model_dump(),
            "devices": cfg.federated.num_devices,
            "rounds": cfg.federated.rounds,
            "partitioning": {
                "scheme": cfg.federated.partitioning,
                "alpha": cfg.federated.dirichlet_alpha,
                "classes_per_device": cfg.federated.classes_per_device,
            },
            "device_privacy": devices,
            "local_test_accuracy": local_accuracy,
        },
        "randomness": randomness_summary(cfg),
        "history": history,
        "server_wall_seconds": time.perf_counter() - started,
        "config": cfg.model_dump(),
    }
    summary["plots"] = ["rounds.png", "attacks.png", "reconstruction_grid.png"]
    write_json(out / "summary.json", summary)
    plot_rounds(history, tasks, out / "rounds.png")
    plot_attacks(summary["methods"], out / "attacks.png")
    plot_reconstruction_grid(
        attack_data.evaluation.images, {f"{method}: {t}": r for t, r in recons.items()}, out / "reconstruction_grid.png"
    )
    (out / "report.md").write_text(render_report(summary))
    return summary
