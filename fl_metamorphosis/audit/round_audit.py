"""Audit every round's releases the server holds, each under the weights it was released with.

Threat model: the server itself. In round r (0..R) it sends its weights W_r to devices and receives their
released (clipped and noised) task features; it keeps all of those rows, and it knows every W_r because
it chose them. The final model's audit (``run_audit.py``) attacks only releases under W_R; but rows
released under an early, barely trained W_r can leak far more (docs/results.md has the figures). So for
each held round this module does what such a server can do: release labelled images under W_r through the
same feature-DP mechanism with its own noise, train the cross-task attackers (``cross_task_probe.py``) on
them, and score them on held-out images released under W_r. Weighting each round by the rows the server
holds from it gives the "held rows" figure: what the attack gets on an average row the server keeps.

This is the library layer: it reads a run folder through ``checkpoint.py`` and never imports Flower, so
the same audit runs from the CLI on a finished run, inside the server app, and in tests without a
federation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_model, load_run
from ..config import AuditConfig, FeatureDPConfig
from ..training import released_features
from .cross_task_probe import cross_task_attacks
from .run_audit import AttackData

MARGIN = 0.05  # a round "leaks" when its attack beats chance by more than this
SHARE_KEY = f"share_rows_above_chance_plus_{MARGIN}"
ATTACKER = (
    "the server: it knows every round's weights W_r (it chose and sent them), the feature-DP mechanism, and "
    "labelled images of every task, which it releases under W_r with its own noise to train attackers that it "
    "applies to the rows it received in round r"
)


@dataclass
class HeldRound:
    """The rows the server received in one round, and the generator they were released under."""

    round: int
    generator: dict[str, torch.Tensor]  # state_dict under which this round's feature query ran
    rows: dict[str, int]  # task -> rows of that task received in this round
    rows_source: str = "released_rows"  # where ``rows`` came from (the server's count or a fallback)
    noise: dict[str, float] = field(default_factory=dict)  # task -> the lowest noise step it was released at


# --- reading a run folder --------------------------------------------------------------------------------


def _task_names(row: dict) -> list[str]:
    # every metrics row carries one held-out accuracy per task, in the dataset's task order
    return [k.removeprefix("test_acc.") for k in row if k.startswith("test_acc.")]


def held_rounds(run_dir: Path) -> list[HeldRound]:
    """Every round of ``run_dir`` whose weights are on disk: 0 (``checkpoints/initial.ckpt``, skipped when
    absent) and 1..R (``checkpoints/round_NNN.ckpt``), in round order.

    Rows per round come from the metrics rows' ``released_rows`` (round 0's from round 1's
    ``released_rows_round0``). Older runs lack them: a round then gets the growth of the cumulative
    ``feature_rows_received`` since the previous round. That count is of pairs, and every pair released
    gives one row to each task (``FeaturesReply.num_examples``), so each task gets the whole difference.
    Round 1's cumulative count includes round 0's query: split evenly between them when round 0 is held
    (both queries ask as many devices as a round samples), all to round 1 otherwise.
    """
    folder = Path(run_dir) / "checkpoints"
    generators: dict[int, dict[str, torch.Tensor]] = {}
    rows_by_round: dict[int, dict] = {}
    for file in sorted(folder.glob("round_*.ckpt")):
        ckpt = load_run(file)
        generators[ckpt.round] = ckpt.generator
        # every checkpoint holds the metrics rows so far; a later one may fill a round whose file is gone
        rows_by_round.update({int(r["round"]): r for r in ckpt.rows})
    initial = folder / "initial.ckpt"
    if initial.exists():
        generators[0] = load_model(initial)[2]

    first = rows_by_round.get(1, {})
    round0 = first.get("released_rows_round0")
    held = []
    for rnd in sorted(generators):
        row = rows_by_round.get(rnd, {})
        if rnd == 0:
            rows, source = _round0_rows(first, round0)
        elif "released_rows" in row:
            rows, source = {t: int(n) for t, n in row["released_rows"].items()}, "released_rows"
        else:
            rows, source = _fallback_rows(rnd, row, rows_by_round, round0, 0 in generators)
        noise = first.get("released_noise_round0", {}) if rnd == 0 else row.get("released_noise", {})
        held.append(HeldRound(rnd, generators[rnd], rows, source, {t: float(m) for t, m in noise.items()}))
    return held


def _round0_rows(first: dict, round0: dict | None) -> tuple[dict[str, int], str]:
    if round0 is not None:
        return {t: int(n) for t, n in round0.items()}, "released_rows"
    if "released_rows" in first and "feature_rows_received" in first:  # round 1 known: round 0 is the rest
        return {t: int(first["feature_rows_received"]) - int(n) for t, n in first["released_rows"].items()}, (
            "feature_rows_received minus round 1's released_rows"
        )
    total = int(first.get("feature_rows_received", 0))
    return {t: total // 2 for t in _task_names(first)}, "half of round 1's feature_rows_received (rounds 0 and 1)"


def _fallback_rows(
    rnd: int, row: dict, rows_by_round: dict[int, dict], round0: dict | None, round0_held: bool
) -> tuple[dict[str, int], str]:
    tasks = _task_names(row)
    cumulative = int(row.get("feature_rows_received", 0))
    if rnd > 1:
        before = int(rows_by_round.get(rnd - 1, {}).get("feature_rows_received", 0))
        return {t: cumulative - before for t in tasks}, "feature_rows_received difference"
    if round0 is not None:
        return {t: cumulative - int(round0.get(t, 0)) for t in tasks}, "feature_rows_received minus round 0's rows"
    if round0_held:
        return {t: cumulative - cumulative // 2 for t in tasks}, (
            "half of round 1's feature_rows_received (rounds 0 and 1)"
        )
    # round 0's weights are gone: its rows are counted under round 1, the nearest weights the server kept
    return {t: cumulative for t in tasks}, "feature_rows_received (round 1 includes round 0's rows)"


# --- the audit ---------------------------------------------------------------------------------------------


def _audit_round(
    generator: nn.Module, held: HeldRound, feature_dp: FeatureDPConfig, data: AttackData, cfg: AuditConfig, seed: int
) -> dict[str, dict]:
    generator.load_state_dict(held.generator)
    # distinct seeds per round and split: each release carries its own noise, as the devices' did
    base = seed + 10_000 * (held.round + 1)
    att = ev = None
    # each task at the lowest noise step any device released it at this round (the release gate raises a
    # leaking task's noise): the rows released at a higher step are attacked as if this noisy, an upper bound
    for k, step in enumerate(sorted(set(held.noise.values()) | {1.0})):
        noised = feature_dp.model_copy(update={"noise_std": feature_dp.noise_std * step})
        a = released_features(generator, data.attacker.images, noised, base + 101 + 1000 * k)
        e = released_features(generator, data.evaluation.images, noised, base + 202 + 1000 * k)
        att, ev = (a, e) if att is None else (att, ev)
        for t, name in enumerate(data.attacker.task_names):
            if held.noise.get(name, 1.0) == step:
                att[:, t], ev[:, t] = a[:, t], e[:, t]
    cross = cross_task_attacks(
        att.numpy(),
        data.attacker.labels.numpy(),
        ev.numpy(),
        data.evaluation.labels.numpy(),
        data.attacker.task_names,
        cfg,
        seed,
    )
    keep = ("accuracy", "chance", "attacker", "ci95", "p_value")
    return {pair: {k: v[k] for k in keep} for pair, v in cross.items()}


def _initial_positions(n: int, sample: int | None) -> set[int]:
    if sample is None or sample >= n:
        return set(range(n))
    spread = np.linspace(0, n - 1, max(sample, 1)).round().astype(int).tolist()
    return {0, min(1, n - 1), n - 1, *spread}  # the first rounds leak most, the last is the deployed model


def audit_held_rows(
    rounds: list[HeldRound],
    build_generator: Callable[[], nn.Module],
    feature_dp: FeatureDPConfig,
    data: AttackData,
    cfg: AuditConfig,
    seed: int,
    *,
    sample: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Attack each held round's releases under its own weights, and weight rounds by the rows held.

    ``sample=None`` audits every round; ``sample=k`` audits k rounds spread over the run (always the first
    two and the last), then refines: while the worst audited round has an unaudited neighbour, that
    neighbour is audited, so the reported worst round is a local maximum between audited rounds. A round
    not audited takes, per pair t->s, the larger accuracy of its nearest audited rounds on either side that
    held rows of task t (``"interpolated": true``; each pair names the round it was taken from,
    ``"from_round"``).

    Headline per ordered pair t->s: the mean accuracy over rounds weighted by the rows of task t held from
    each (the rows the t->s attack applies to). Its 95 % interval is conservative: every round is scored on
    the same held-out images, so the rounds' estimates are correlated, and the SD of a weighted sum of
    correlated estimates is at most the weighted sum of their SDs (triangle inequality): half-width
    1.96 * sum_r w_r * sqrt(a_r (1 - a_r) / m), clipped to [0, 1]. Interpolated rounds enter with the
    neighbour's accuracy; the interval does not cover that interpolation.
    """
    rounds = sorted(rounds, key=lambda h: h.round)
    if not rounds:
        raise ValueError("no held rounds to audit: the run folder has no checkpoints")
    first_round = rounds[0].round
    # a query whose every task was withheld left the server nothing to attack: it is listed, not audited
    nothing = [h.round for h in rounds if not any(h.rows.values())]
    rounds = [h for h in rounds if any(h.rows.values())]
    if not rounds:
        return {"rounds": [], "held_rows": {}, "worst_round": None, "audited_rounds": [], "sampled": False,
                "eval_samples": len(data.evaluation), "rows_source": "", "rounds_with_nothing_held": nothing,
                "notes": ["the server holds no released rows: every task was withheld in every query"],
                "attacker": ATTACKER}  # fmt: skip
    generator = build_generator()
    m = len(data.evaluation)
    audited: dict[int, dict[str, dict]] = {}  # position in ``rounds`` -> its pairs

    def run(pos: int) -> None:
        t0 = time.perf_counter()
        audited[pos] = _audit_round(generator, rounds[pos], feature_dp, data, cfg, seed)
        if progress is not None:
            figures = ", ".join(
                f"{pair} {p['accuracy']:.2f} (chance {p['chance']:.2f})" for pair, p in audited[pos].items()
            )
            progress(f"round {rounds[pos].round}: {figures} [{time.perf_counter() - t0:.0f} s]")

    def held_excess(pos: int) -> float:
        """The round's worst excess over chance among pairs whose attacked task had rows held from it."""
        held = [v["accuracy"] - v["chance"] for k, v in audited[pos].items() if rounds[pos].rows.get(k.split("->")[0])]
        return max(held, default=-1.0)

    for pos in sorted(_initial_positions(len(rounds), sample)):
        run(pos)
    while True:  # refine around the worst audited round until both its neighbours are audited
        worst = max(audited, key=held_excess)
        missing = [p for p in (worst - 1, worst + 1) if 0 <= p < len(rounds) and p not in audited]
        if not missing:
            break
        for pos in missing:
            run(pos)

    per_round = []
    for pos, held in enumerate(rounds):
        if pos in audited:
            pairs = audited[pos]
        else:
            pairs = {}
            for pair in audited[min(audited)]:
                src = max(
                    _neighbours(pos, pair, audited, rounds), key=lambda p, pair=pair: audited[p][pair]["accuracy"]
                )
                pairs[pair] = {**audited[src][pair], "from_round": rounds[src].round}
        per_round.append(
            {"round": held.round, "interpolated": pos not in audited, "rows": dict(held.rows), "pairs": pairs}
        )

    worst_pos = max(audited, key=held_excess)
    worst_pairs = audited[worst_pos]
    held_pairs = [k for k in worst_pairs if rounds[worst_pos].rows.get(k.split("->")[0])]
    worst_pair = max(held_pairs, key=lambda k: worst_pairs[k]["accuracy"] - worst_pairs[k]["chance"])
    sources = sorted({h.rows_source for h in rounds})
    notes = []
    if first_round != 0:
        notes.append("round 0 not audited: its weights were not kept (no checkpoints/initial.ckpt: an older run)")
    return {
        "rounds": per_round,
        "held_rows": {pair: _headline(per_round, pair, m) for pair in worst_pairs},
        "worst_round": {
            "round": rounds[worst_pos].round,
            "pair": worst_pair,
            "accuracy": worst_pairs[worst_pair]["accuracy"],
            "chance": worst_pairs[worst_pair]["chance"],
            "ci95": worst_pairs[worst_pair]["ci95"],
        },
        "audited_rounds": [rounds[p].round for p in sorted(audited)],
        "sampled": len(audited) < len(rounds),
        "eval_samples": m,  # held-out images each round is scored on (the m of the interval)
        "rows_source": "; ".join(sources),
        "rounds_with_nothing_held": nothing,  # every task withheld by every device asked: no rows to attack
        "notes": notes,
        "attacker": ATTACKER,
    }


def _neighbours(pos: int, pair: str, audited: dict[int, dict], rounds: list[HeldRound]) -> list[int]:
    """The nearest audited rounds on either side of ``pos`` that held rows of the pair's attacked task (a
    round that held none of them was attacked at a release nobody made); the plain nearest ones if none did
    (positions 0 and n-1 are always audited)."""
    task = pair.split("->")[0]
    held = [p for p in audited if rounds[p].rows.get(task)]
    sides = [max((p for p in held if p < pos), default=None), min((p for p in held if p > pos), default=None)]
    found = [p for p in sides if p is not None]
    return found or [max(p for p in audited if p < pos), min(p for p in audited if p > pos)]


def _headline(per_round: list[dict], pair: str, m: int) -> dict:
    """The release-weighted figure of one ordered pair (weights: rows of the attacked task t per round)."""
    task = pair.split("->")[0]
    rows = [r["rows"].get(task, 0) for r in per_round]
    total = sum(rows)
    # no row counts at all (should not happen): every round weighs the same rather than dividing by zero
    weights = [n / total for n in rows] if total > 0 else [1 / len(rows)] * len(rows)
    acc = [r["pairs"][pair]["accuracy"] for r in per_round]
    chance = [r["pairs"][pair]["chance"] for r in per_round]
    mean = sum(w * a for w, a in zip(weights, acc, strict=True))
    mean_chance = sum(w * c for w, c in zip(weights, chance, strict=True))
    half = 1.96 * sum(w * math.sqrt(a * (1 - a) / m) for w, a in zip(weights, acc, strict=True))
    above = sum(w for w, a, c in zip(weights, acc, chance, strict=True) if a > c + MARGIN)
    return {
        "accuracy": mean,
        "ci95": [max(0.0, mean - half), min(1.0, mean + half)],
        "chance": mean_chance,
        "excess": mean - mean_chance,
        "rows": total,
        SHARE_KEY: above,
    }


# --- report ------------------------------------------------------------------------------------------------


def render_round_audit(result: dict) -> list[str]:
    """Markdown lines for report.md: the audited rounds, then the held-rows headline and the worst round."""
    pairs = list(result["held_rows"])
    tasks = list(result["rounds"][0]["rows"]) if result["rounds"] else []
    if not result["rounds"]:
        return ["## Held rows (every round's releases under its own round's weights)", "", *result["notes"]]
    lines = [
        "## Held rows (every round's releases under its own round's weights)",
        "",
        "The final-model audit attacks releases under the last round's weights only. The server also keeps the "
        "rows of every earlier round and knows the weights it sent for each; here each round's rows are attacked "
        "with attackers trained under that round's weights. Attacker: " + result["attacker"] + ".",
        "",
        "| round | " + " | ".join(f"{p} [95 %]" for p in pairs) + " | rows " + " / ".join(tasks) + " |",
        "|---|" + "---|" * len(pairs) + "---|",
    ]
    for r in result["rounds"]:
        if r["interpolated"]:
            continue
        cells = [
            f"{p['accuracy']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] (chance {p['chance']:.3f})"
            for p in (r["pairs"][k] for k in pairs)
        ]
        rows = " / ".join(str(r["rows"].get(t, 0)) for t in tasks)
        lines.append(f"| {r['round']} | " + " | ".join(cells) + f" | {rows} |")
    n_interp = sum(r["interpolated"] for r in result["rounds"])
    if n_interp:
        lines += [
            "",
            f"{n_interp} rounds not audited (sampled); for the headline each takes the larger accuracy of its "
            "nearest audited rounds.",
        ]
    lines += ["", "Held-rows headline (mean over rounds weighted by the rows of the attacked task held from each):", ""]
    for pair, h in result["held_rows"].items():
        lines.append(
            f"- {pair}: {h['accuracy']:.3f} [{h['ci95'][0]:.3f}, {h['ci95'][1]:.3f}] (chance {h['chance']:.3f}, "
            f"excess {h['excess']:+.3f}) over {h['rows']} rows; {h[SHARE_KEY]:.0%} of them released in a round "
            f"whose attack beats chance by more than {MARGIN}"
        )
    if result.get("rounds_with_nothing_held"):
        lines += ["", f"Queries with nothing held (every task withheld): rounds {result['rounds_with_nothing_held']}."]
    w = result["worst_round"]
    lines += [
        "",
        f"Worst round: round {w['round']}, {w['pair']} {w['accuracy']:.3f} [{w['ci95'][0]:.3f}, "
        f"{w['ci95'][1]:.3f}] (chance {w['chance']:.3f}).",
        "",
        "The interval is conservative: every round is scored on the same held-out images, so the per-round "
        "estimates are correlated and their standard deviations are summed. Rows: " + result["rows_source"] + ".",
    ]
    lines += [f"Note: {note}." for note in result.get("notes", [])]
    return lines
