"""Attacks that measure privacy: cross-task probes, input reconstruction, distance correlation."""

from .cross_task_probe import chance_level, cross_task_attacks, probe_accuracy
from .dependence import dependence_report
from .reconstruction_attack import image_scores, reconstruction_attack
from .run_audit import AttackData, audit_model, label_only_floor

__all__ = [
    "AttackData",
    "audit_model",
    "chance_level",
    "cross_task_attacks",
    "dependence_report",
    "image_scores",
    "label_only_floor",
    "probe_accuracy",
    "reconstruction_attack",
]
