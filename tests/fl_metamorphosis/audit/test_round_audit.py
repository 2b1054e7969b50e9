"""The held-rows audit: every round's releases attacked under that round's weights, weighted by rows held."""

import math

import pytest
import torch
from conftest import TINY_OVERRIDES

from fl_metamorphosis.audit import AttackData, HeldRound, audit_held_rows, held_rounds, render_round_audit
from fl_metamorphosis.audit.round_audit import MARGIN, _neighbours
from fl_metamorphosis.checkpoint import RunCheckpoint, save_model, save_run
from fl_metamorphosis.config import build_config
from fl_metamorphosis.data import load_dataset
from fl_metamorphosis.metrics.round_plots import plot_round_attacks
from fl_metamorphosis.model import FeatureGenerator


@pytest.fixture(scope="module")
def setup():
    cfg = build_config(None, [*TINY_OVERRIDES, 'methods=["metamorphosis"]', 'audit.attackers=["linear"]'])
    split = load_dataset(cfg.data, 0)
    data = AttackData.draw(split, cfg.audit, 0)
    num_classes = [t.num_classes for t in split.test.tasks]

    def build() -> FeatureGenerator:
        return FeatureGenerator("metamorphosis", split.test.image_shape, len(num_classes), cfg.model, num_classes)

    torch.manual_seed(0)
    leaky = build().state_dict()  # a random encoder's raw features carry both digits
    blind = {k: torch.zeros_like(v) for k, v in leaky.items()}  # all-zero weights: constant features
    # no feature noise: the leaky round leaks clearly and the blind rounds sit at (or below) chance exactly
    feature_dp = cfg.feature_dp.model_copy(update={"enabled": False})
    return cfg, data, build, leaky, blind, feature_dp


def _rounds(leaky, blind, leaky_rounds, n, rows=None):
    rows = rows or {}
    return [
        HeldRound(r, leaky if r in leaky_rounds else blind, rows.get(r, {"left": 100, "right": 100})) for r in range(n)
    ]


@pytest.fixture(scope="module")
def leaky_round_2(setup):
    cfg, data, build, leaky, blind, feature_dp = setup
    # round 2 leaks; its left rows dominate the held left rows, its right rows are few
    rounds = _rounds(leaky, blind, {2}, 5, {2: {"left": 1000, "right": 10}})
    lines = []
    result = audit_held_rows(rounds, build, feature_dp, data, cfg.audit, 0, progress=lines.append)
    return result, lines


def test_a_leaky_round_dominates_the_rows_weighted_headline(leaky_round_2):
    result, lines = leaky_round_2
    assert result["audited_rounds"] == [0, 1, 2, 3, 4] and not result["sampled"]
    assert result["eval_samples"] == 150  # the tiny preset's held-out images, the m of every round
    assert len(lines) == 5 and lines[2].startswith("round 2: left->right")
    by_round = {r["round"]: r for r in result["rounds"]}
    leak = by_round[2]["pairs"]["left->right"]
    assert leak["accuracy"] > leak["chance"] + 0.3 and leak["p_value"] < 1e-6
    assert all(
        r["pairs"]["left->right"]["accuracy"] <= r["pairs"]["left->right"]["chance"] for r in result["rounds"][:2]
    )
    assert result["worst_round"]["round"] == 2 and result["worst_round"]["accuracy"] > 0.5

    # left->right attacks left rows: round 2 holds 1000 of 1400, so the headline follows the leaky round
    lr, rl = result["held_rows"]["left->right"], result["held_rows"]["right->left"]
    weights = {r["round"]: r["rows"]["left"] / 1400 for r in result["rounds"]}
    expected = sum(weights[r["round"]] * r["pairs"]["left->right"]["accuracy"] for r in result["rounds"])
    assert lr["rows"] == 1400 and lr["accuracy"] == pytest.approx(expected)
    assert lr["excess"] > 0.2 and lr["ci95"][0] > lr["chance"]
    assert lr["share_rows_above_chance_plus_0.05"] == pytest.approx(1000 / 1400)
    # conservative interval: the weighted sum of the rounds' standard errors
    m = result["eval_samples"]
    half = 1.96 * sum(
        weights[r["round"]] * math.sqrt(a * (1 - a) / m)
        for r in result["rounds"]
        for a in [r["pairs"]["left->right"]["accuracy"]]
    )
    assert lr["ci95"] == pytest.approx([lr["accuracy"] - half, lr["accuracy"] + half])
    # right->left attacks right rows: round 2 holds only 10 of 410, so the same leak barely moves it
    assert rl["rows"] == 410 and rl["share_rows_above_chance_plus_0.05"] == pytest.approx(10 / 410)
    assert rl["excess"] < lr["excess"] - 0.2


def test_b_sampling_brackets_the_worst_round_and_interpolates_conservatively(setup):
    cfg, data, build, leaky, blind, feature_dp = setup
    rounds = _rounds(leaky, blind, {4, 5}, 9)
    result = audit_held_rows(rounds, build, feature_dp, data, cfg.audit, 0, sample=3)
    audited = set(result["audited_rounds"])
    # the spread (0, 4, 8) and rounds 0, 1 first; round 4 is then the worst and gets both neighbours
    assert {0, 1, 4, 8} <= audited and {3, 5} <= audited and result["sampled"]
    worst = result["worst_round"]["round"]
    assert worst in (4, 5) and {worst - 1, worst + 1} <= audited
    assert len(audited) < 9
    by_round = {r["round"]: r for r in result["rounds"]}
    assert [r for r in by_round if by_round[r]["interpolated"]] == sorted(set(range(9)) - audited)
    # round 2 lies between audited rounds 1 and 3: it takes the larger of their accuracies, pair by pair
    assert by_round[2]["interpolated"]
    for pair in ("left->right", "right->left"):
        larger = max(by_round[1]["pairs"][pair]["accuracy"], by_round[3]["pairs"][pair]["accuracy"])
        assert by_round[2]["pairs"][pair]["accuracy"] == larger
    # the 7th round is interpolated unless the refinement reached it; either way never below its neighbours
    for r in set(range(9)) - audited:
        left, right = max(a for a in audited if a < r), min(a for a in audited if a > r)
        for pair, p in by_round[r]["pairs"].items():
            assert p["accuracy"] >= by_round[left]["pairs"][pair]["accuracy"]
            assert p["accuracy"] >= by_round[right]["pairs"][pair]["accuracy"]


def _row(rnd, cumulative, **extra):
    return {"round": rnd, "test_acc.left": 0.5, "test_acc.right": 0.5, "feature_rows_received": cumulative, **extra}


def _write_run(folder, rows, initial=True):
    ckpts = folder / "checkpoints"
    if initial:
        save_model(ckpts / "initial.ckpt", "metamorphosis", {"w": torch.tensor(0.0)}, {}, {})
    for n in range(1, len(rows) + 1):
        save_run(ckpts, RunCheckpoint(n, "metamorphosis", {}, {"w": torch.tensor(float(n))}, {}, rows=rows[:n]))


def test_c_held_rounds_reads_the_run_folder_and_falls_back_on_old_rows(tmp_path):
    rows = [
        _row(1, 300, released_rows={"left": 150, "right": 140}, released_rows_round0={"left": 150, "right": 150}),
        _row(2, 420, released_rows={"left": 120, "right": 120}),
        _row(3, 500, released_rows={"left": 80, "right": 70}),
    ]
    _write_run(tmp_path / "new", rows)
    held = held_rounds(tmp_path / "new")
    assert [h.round for h in held] == [0, 1, 2, 3]
    assert [float(h.generator["w"]) for h in held] == [0.0, 1.0, 2.0, 3.0]  # each round under its own weights
    assert [h.rows for h in held] == [
        {"left": 150, "right": 150},
        {"left": 150, "right": 140},
        {"left": 120, "right": 120},
        {"left": 80, "right": 70},
    ]
    assert {h.rows_source for h in held} == {"released_rows"}

    # an older run: no released_rows, no initial.ckpt. Every pair gives one row to each task, so each task
    # gets the growth of the cumulative count; round 1's count includes round 0's query, kept with round 1
    old = [_row(1, 300), _row(2, 420), _row(3, 500)]
    _write_run(tmp_path / "old", old, initial=False)
    held = held_rounds(tmp_path / "old")
    assert [h.round for h in held] == [1, 2, 3]
    assert [h.rows for h in held] == [
        {"left": 300, "right": 300},
        {"left": 120, "right": 120},
        {"left": 80, "right": 80},
    ]
    assert all("feature_rows_received" in h.rows_source for h in held)

    # initial.ckpt present but no counts: round 1's cumulative count is split between rounds 0 and 1
    _write_run(tmp_path / "mixed", old, initial=True)
    held = held_rounds(tmp_path / "mixed")
    assert [h.round for h in held] == [0, 1, 2, 3]
    assert held[0].rows == held[1].rows == {"left": 150, "right": 150}
    assert "half" in held[0].rows_source


def test_d_plot_and_report_name_the_worst_round(leaky_round_2, setup, tmp_path):
    result, _ = leaky_round_2
    png = tmp_path / "round_attacks.png"
    plot_round_attacks(result, png, margin=MARGIN)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    lines = render_round_audit(result)
    text = "\n".join(lines)
    assert "every round's releases under its own round's weights" in text and "final-model audit" in text
    assert f"Worst round: round 2, {result['worst_round']['pair']} {result['worst_round']['accuracy']:.3f}" in text
    assert sum(line.startswith("| ") and line[2].isdigit() for line in lines) == 5  # one table row per audited round
    assert f"{result['held_rows']['left->right']['accuracy']:.3f}" in text

    # a run without round 0's weights says so in the result and the report
    cfg, data, build, leaky, blind, feature_dp = setup
    partial = audit_held_rows(_rounds(leaky, blind, set(), 3)[1:], build, feature_dp, data, cfg.audit, 0)
    assert partial["audited_rounds"] == [1, 2] and any("round 0" in n for n in partial["notes"])
    assert any(line.startswith("Note: round 0 not audited") for line in render_round_audit(partial))


def test_rows_released_at_a_raised_noise_are_attacked_at_that_noise(setup):
    cfg, data, build, leaky, blind, _ = setup
    feature_dp = cfg.feature_dp.model_copy(update={"noise_std": 0.05})  # the leaky encoder reads clearly at 0.05
    rows = {"left": 100, "right": 100}
    plain = audit_held_rows([HeldRound(0, leaky, rows)], build, feature_dp, data, cfg.audit, 0)
    raised = audit_held_rows(
        [HeldRound(0, leaky, rows, noise={"left": 16.0, "right": 1.0})], build, feature_dp, data, cfg.audit, 0
    )
    at = {k: v["accuracy"] for k, v in plain["rounds"][0]["pairs"].items()}
    noisy = {k: v["accuracy"] for k, v in raised["rounds"][0]["pairs"].items()}
    assert noisy["left->right"] < at["left->right"] - 0.1  # left's rows carried 16x the noise: less to read
    assert noisy["right->left"] == pytest.approx(at["right->left"], abs=0.08)  # right's were as configured


def test_an_unaudited_round_is_not_bracketed_by_a_round_that_held_none_of_the_attacked_tasks_rows():
    # round 5 (audited) withheld the left task: its left->right figure attacks a release nobody made
    rows = {3: {"left": 100, "right": 100}, 5: {"left": 0, "right": 100}, 6: {"left": 100, "right": 100}}
    rounds = [HeldRound(r, {}, rows.get(r, {"left": 100, "right": 100})) for r in range(9)]
    audited = {p: {} for p in (0, 3, 5, 8)}
    assert sorted(_neighbours(6, "left->right", audited, rounds)) == [3, 8]  # round 5 skipped
    assert sorted(_neighbours(6, "right->left", audited, rounds)) == [5, 8]  # it held right rows: it counts
