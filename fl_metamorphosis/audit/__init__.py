"""Attacks that measure privacy: cross-task probes, input reconstruction, distance correlation."""

from .cross_task_probe import chance_level, cross_task_attacks, probe_accuracy
from .dependence import dependence_report
from .reconstruction_attack import image_scores, reconstruction_attack
from .round_audit import HeldRound, audit_held_rows, held_rounds, render_round_audit
from .run_audit import AttackData, audit_model, label_only_floor

__all__ = [
    "AttackData",
    "HeldRound",
    "audit_held_rows",
    "audit_model",
    "chance_level",
    "cross_task_attacks",
    "dependence_report",
    "held_rounds",
    "image_scores",
    "label_only_floor",
    "probe_accuracy",
    "reconstruction_attack",
    "render_round_audit",
]
