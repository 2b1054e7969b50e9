"""The stages after the rounds (and the interim audit): evaluation on the devices, audit, summary, report.

The attacker learns from at least as many released rows as the server has received so far, and its
data, like the label-only floors, is drawn once per row count and reused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flwr.serverapp import Grid

from fl_metamorphosis import audit as attacks  # lazy names: a run without the audit never imports the attacks
from fl_metamorphosis.audit.poisoning import malicious_devices
from fl_metamorphosis.central import SUMMARY_VERSION, method_summary, randomness_summary
from fl_metamorphosis.environment import machine_description
from fl_metamorphosis.flower import messages as proto
from fl_metamorphosis.metrics import plot_attacks, plot_reconstruction_grid, plot_rounds, render_report, write_json
from fl_metamorphosis.metrics.report import render_release_sections
from fl_metamorphosis.metrics.round_plots import plot_round_attacks
from fl_metamorphosis.model import FeatureGenerator
from fl_metamorphosis.training.trainer import TrainedModel

from .replies import REPLY_TIMEOUT_S

if TYPE_CHECKING:
    from fl_metamorphosis.audit import AttackData
    from fl_metamorphosis.config import ExperimentConfig

    from .round_loop import Federation


def poisoning_summary(cfg: ExperimentConfig) -> dict[str, Any]:
    """The run's misbehaving devices (the config says which; the strategy was never told)."""
    p, fed = cfg.federated.poisoning, cfg.federated
    return {**p.model_dump(), "devices": sorted(malicious_devices(p, fed.num_devices, cfg.train.seed))}


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackerDraw:
    """The attacker's data and the label-only floors, drawn for one row count (``Federation.attacker``)."""

    rows: int  # the rows the attacker learns from
    data: AttackData
    floors: dict[str, float]


def attack_data(fed: Federation) -> tuple[AttackData, dict[str, float]]:
    rows = max(fed.cfg.audit.attacker_samples, fed.ledger.rows_received)
    if fed.attacker is None or fed.attacker.rows != rows:
        from fl_metamorphosis.data.partition import federated_training_pairs  # flwr-datasets: the audit only

        # members for the membership attack: the devices' own training pairs
        pairs = federated_training_pairs(fed.cfg)
        data = attacks.AttackData.draw(fed.split, fed.cfg.audit, fed.cfg.train.seed, rows, pairs)
        fed.attacker = AttackerDraw(rows, data, attacks.label_only_floor(data, fed.cfg.audit, fed.cfg.train.seed))
    return fed.attacker.data, fed.attacker.floors


def interim_audit(fed: Federation, rnd: int) -> dict[str, Any]:
    data, floors = attack_data(fed)
    model = TrainedModel(fed.method, fed.generator, fed.heads, fed.feature_dp)
    figures, _ = attacks.audit_model(
        model, data, fed.cfg.audit, floors, fed.cfg.train.seed, fed.ledger.max_releases_per_pair
    )
    return {"round": rnd, **{k: figures[k] for k in ("tasks", "cross_task_attack", "reconstruction")}}


def release_summary(fed: Federation) -> dict[str, Any]:
    """The release gate's decisions and the policy refusals, round by round (summary.json's
    ``release_gate`` and ``policy_refusals``)."""
    gate, rows = fed.cfg.release_gate, fed.rows
    rounds = []
    if rows and "released_rows_round0" in rows[0]:
        first = rows[0]
        rounds.append(
            {
                "round": 0,
                "released_rows": first["released_rows_round0"],
                "released_noise": first.get("released_noise_round0", {}),
                "withheld": first["withheld_round0"],
            }
        )
    for r in rows:
        if "released_rows" in r:
            entry = {
                "round": r["round"],
                "released_rows": r["released_rows"],
                "released_noise": r.get("released_noise", {}),
                "withheld": r["withheld"],
            }
            rounds.append(entry | ({"reasons": r["withheld_reasons"]} if r.get("withheld_reasons") else {}))
    withheld = {t: sum(e["withheld"].get(t, 0) for e in rounds) for t in fed.tasks}
    return {
        "release_gate": {
            "enabled": gate.enabled,
            "margin": gate.margin,
            "confidence": gate.confidence,
            "probe": f"cross-validated ridge classifier, {gate.folds} folds, up to {gate.probe_pairs} pairs, "
            f"{gate.noise_copies} noise copies per training pair",
            "device_rounds_withheld": withheld,  # summed over rounds: devices that withheld the task
            "rounds": rounds,
        },
        "policy_refusals": [
            {"round": r["round"], "refused": r["refused"], "refusals": r.get("refusals", {})}
            for r in rows
            if r.get("refused")
        ],
    }


def held_rows_audit(fed: Federation, data: AttackData) -> dict[str, Any] | None:
    """Every round's releases under that round's weights (``audit/round_audit.py``), or None when
    ``audit.held_rounds`` is 0."""
    sample = fed.cfg.audit.held_rounds
    if sample == 0:
        return None
    cfg, split = fed.cfg, fed.split
    num_classes = [t.num_classes for t in split.test.tasks]

    def fresh_generator() -> FeatureGenerator:
        return FeatureGenerator(fed.method, split.test.image_shape, len(num_classes), cfg.model, num_classes)

    rounds = attacks.held_rounds(fed.out)
    log.info(f"auditing the rows held from {len(rounds)} feature queries, each under its own round's weights")
    return attacks.audit_held_rows(
        rounds, fresh_generator, fed.feature_dp, data, cfg.audit, cfg.train.seed, sample=sample, progress=log.info
    )


def evaluate_on_devices(grid: Grid, fed: Federation) -> dict[str, float]:
    """The final model on the devices' own held-out pairs, weighted by their size."""
    rounds = fed.cfg.federated.rounds
    messages = fed.strategy.configure_evaluate(rounds, fed.arrays(), proto.config_record(fed.cfg), grid)
    replies, seen = [], set()
    for reply in grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_S):
        node = reply.metadata.src_node_id
        try:
            if reply.has_error():
                raise proto.MessageError(reply.error.reason)
            if node in seen:
                raise proto.MessageError("a second reply (the first one stands)")
            seen.add(node)
            evaluated = proto.EvaluateReply.from_record(reply.content, fed.tasks)
            if evaluated.num_examples > fed.cfg.federated.max_device_examples:  # the weight of its accuracy
                raise proto.MessageError(
                    f"num-examples {evaluated.num_examples} above federated.max_device_examples="
                    f"{fed.cfg.federated.max_device_examples}"
                )
            wrong_device = fed.binding.claim(node, evaluated.device)
            if wrong_device is not None:
                raise proto.MessageError(wrong_device)
            replies.append(reply)
        except (proto.MessageError, KeyError, TypeError, ValueError) as err:
            log.warning(f"  evaluate: rejected reply of node {node}: {err}")
    local = fed.strategy.aggregate_evaluate(rounds, replies) if replies else None
    return {k.removeprefix("accuracy."): float(v) for k, v in (local or {}).items() if k.startswith("accuracy.")}


def final_report(grid: Grid, fed: Federation, audit: bool) -> dict[str, Any]:
    cfg, out, ledger = fed.cfg, fed.out, fed.ledger
    local_accuracy = evaluate_on_devices(grid, fed)
    log.info(f"device-side evaluation (local test pairs): {local_accuracy}")
    wall = time.perf_counter() - fed.started
    model = TrainedModel(fed.method, fed.generator, fed.heads, fed.feature_dp, fed.rows, wall_seconds=wall)
    devices = ledger.summary()
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
        "devices_whose_state_was_lost": sorted(int(d) for d in ledger.disagreements),
    }
    if not (audit and cfg.audit.enabled):  # rounds only (tests of the bookkeeping, timing runs)
        summary = {
            "summary_version": SUMMARY_VERSION,
            "command": fed.command,
            "tasks": fed.tasks,
            "history": fed.rows,
            "audited": False,
            "dp_sgd": model.dp_sgd,
            "device_privacy": devices,
            "resumed_from_round": fed.resumed_from,
            "config": cfg.model_dump(),  # what a sweep compares to reuse the run
            **release_summary(fed),
        }
        write_json(out / "summary.json", {**summary, "server_wall_seconds": time.perf_counter() - fed.started})
        return summary
    k = ledger.max_releases_per_pair
    log.info(f"auditing the final model: {ledger.rows_received} released rows received, most releases of one pair {k}")
    data, floors = attack_data(fed)
    figures, recons = attacks.audit_model(model, data, cfg.audit, floors, cfg.train.seed, k)
    figures["attacker"]["server_saw_releases"] = ledger.rows_received
    held = held_rows_audit(fed, data)
    plotted = bool(held and held["rounds"])  # nothing to plot when every query withheld every task
    summary = {
        "summary_version": SUMMARY_VERSION,
        "command": fed.command,
        "machine": machine_description(),
        "tasks": fed.tasks,
        "data": {
            "name": cfg.data.name,
            "train": len(fed.split.train),
            "test": len(fed.split.test),
            "evaluation": len(data.evaluation),  # the audit's held-out test images: the report's accuracy
            "skipped": fed.split.skipped,
        },
        "methods": {fed.method: method_summary(model, figures, len(fed.tasks), releases_per_pair=k)},
        "federated": {
            "strategy": cfg.federated.strategy.model_dump(),
            "secure_aggregation": cfg.federated.secure_aggregation,
            "devices": cfg.federated.num_devices,
            "rounds": cfg.federated.rounds,
            "partitioning": {
                "scheme": cfg.federated.partitioning,
                "alpha": cfg.federated.dirichlet_alpha,
                "classes_per_device": cfg.federated.classes_per_device,
            },
            "device_privacy": devices,
            "local_test_accuracy": local_accuracy,
            "poisoning": poisoning_summary(cfg),
        },
        "randomness": randomness_summary(cfg),
        "history": fed.rows,
        "server_wall_seconds": time.perf_counter() - fed.started,  # this process's part of the run
        "resumed_from_round": fed.resumed_from,
        "config": cfg.model_dump(),
        "plots": ["rounds.png", "attacks.png", "reconstruction_grid.png"] + (["round_attacks.png"] if plotted else []),
        # the final model's audit is ``methods``; this one attacks every round's rows under its own weights
        "held_rows_audit": held,
        **release_summary(fed),
    }
    write_json(out / "summary.json", summary)
    plot_rounds(fed.rows, fed.tasks, out / "rounds.png")
    plot_attacks(summary["methods"], out / "attacks.png")
    grid_rows = {f"{fed.method}: {t}": r for t, r in recons.items()}
    plot_reconstruction_grid(data.evaluation.images, grid_rows, out / "reconstruction_grid.png")
    if plotted:
        from fl_metamorphosis.audit.round_audit import MARGIN

        plot_round_attacks(held, out / "round_attacks.png", margin=MARGIN)
    report = render_report(summary) + "\n".join(["", *(attacks.render_round_audit(held) if held else [])]) + "\n"
    (out / "report.md").write_text(report + render_release_sections(summary))
    return summary
