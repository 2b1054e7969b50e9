"""Attacks that measure privacy: cross-task probes, input reconstruction, distance correlation.

The names below load on first use (PEP 562): a device imports ``audit.poisoning`` (the simulated attackers'
updates) and nothing else of the audit, and must not pay for scikit-learn, SciPy's statistics and
torchmetrics in every ClientApp process it starts (a deployed device starts one per message). The attack
``reconstruction_attack`` is imported from its module of the same name: once that module is loaded, the
package's attribute of that name is the module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_names import lazy_names

if TYPE_CHECKING:
    from .cross_task_probe import chance_level, cross_task_attacks, probe_accuracy
    from .dependence import dependence_report
    from .reconstruction_attack import image_scores
    from .round_audit import HeldRound, audit_held_rows, held_rounds, render_round_audit
    from .run_audit import AttackData, audit_model, label_only_floor

_HOMES = {
    "chance_level": "cross_task_probe",
    "cross_task_attacks": "cross_task_probe",
    "probe_accuracy": "cross_task_probe",
    "dependence_report": "dependence",
    "image_scores": "reconstruction_attack",
    "HeldRound": "round_audit",
    "audit_held_rows": "round_audit",
    "held_rounds": "round_audit",
    "render_round_audit": "round_audit",
    "AttackData": "run_audit",
    "audit_model": "run_audit",
    "label_only_floor": "run_audit",
}
__all__ = [  # noqa: RUF022  (the order of _HOMES)
    "chance_level",
    "cross_task_attacks",
    "probe_accuracy",
    "dependence_report",
    "image_scores",
    "HeldRound",
    "audit_held_rows",
    "held_rounds",
    "render_round_audit",
    "AttackData",
    "audit_model",
    "label_only_floor",
]


__getattr__ = lazy_names(__name__, _HOMES)
