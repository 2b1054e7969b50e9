"""A device owner's privacy policy: the floors no server message can lower.

Every request carries the experiment config, and the server writes it. A server that lies could switch
feature DP off, ask for noise of 1e-9, choose the universal method, raise DP-SGD's delta until the
device's epsilon means nothing, or lift the release cap. So the device, not the message, decides its
protection: before it trains, releases or evaluates anything it compares the message's config with its
owner's policy, field by field, and refuses a message that asks for less protection than any floor.
The refusal is an error reply naming each field with the value asked for and the floor; nothing is
trained, released or counted. A message at or above every floor is computed as sent: it is the stricter
of the two.

Where the policy comes from:

* a real device: the project's defaults (``DevicePolicy()``), so a weaker config is refused out of the
  box; ``deploy device`` flags or a policy file (TOML, these fields) change them;
* a simulation: the run's own config, which its operator wrote (``DevicePolicy.from_config``), unless
  the operator gives a policy file.

The delta floor is the device's own: DP-SGD's epsilon at a larger delta is smaller for the same steps
(the same history gives epsilon 10.1 at delta 1e-5 and 1.6 at 0.5), so a server that raised delta would
make the device's budget check pass on any spending.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import ExperimentConfig, Method, ReleaseGateConfig
from ..environment import DEVICE_POLICY_ENV
from ..methods import method_plan, method_spec

POLICY_ENV = DEVICE_POLICY_ENV  # a policy file named in the device's own environment


class PolicyError(ValueError):
    """A policy file that cannot be read; the message names the file and the field."""


@dataclass(frozen=True)
class Refusal:
    """One field of a message below the device's floor."""

    field: str
    asked: Any
    floor: str  # the policy's requirement, as a sentence fragment ("at least 0.25")

    def __str__(self) -> str:
        return f"{self.field}: the server asked {self.asked!r}, this device's policy requires {self.floor}"


class DevicePolicy(BaseModel):
    """The floors of a device's protection. Defaults are the project's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature_dp: bool = Field(True, description="released features must be clipped and noised")
    min_feature_noise: float = Field(0.25, gt=0.0, description="feature_dp.noise_std at least this")
    max_clip_norm: float = Field(1.0, gt=0.0, description="feature_dp.clip_norm at most this")
    mechanisms: list[Literal["gaussian", "laplace"]] = Field(
        default_factory=lambda: ["gaussian"], min_length=1, description="feature-noise mechanisms allowed"
    )
    methods: list[Method] = Field(
        default_factory=lambda: ["metamorphosis", "metamorphosis_adversarial"],
        min_length=1,
        description="the methods whose features this device computes and releases",
    )
    dp_sgd: bool = Field(True, description="local training must be DP-SGD")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="DP-SGD's and feature DP's delta at most this")
    epsilon_budget: float = Field(8.0, gt=0.0, description="federated.device_epsilon_budget at most this")
    max_releases_per_pair: int | None = Field(
        1, ge=1, description="feature_dp.max_releases_per_pair at most this (none: any cap, or none, is accepted)"
    )
    secure_aggregation: bool = Field(False, description="train only inside Flower's SecAgg+")
    release_gate: bool = Field(True, description="probe before every release (privacy/release_gate.py)")
    max_gate_margin: float = Field(0.03, ge=0.0, le=1.0, description="release_gate.margin at most this")
    max_gate_confidence: float = Field(
        0.9, gt=0.5, lt=1.0, description="release_gate.confidence at most this (a higher one withholds less)"
    )
    gate_probe_pairs: int = Field(2_000, ge=50, description="the gate probes at least this many pairs (or all)")
    gate_noise_copies: int = Field(2, ge=1, description="the gate learns from at least this many noise copies")
    gate_reference: bool = Field(
        True, description="the gate also probes public reference pairs (release_gate.reference; data/reference.py)"
    )

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> DevicePolicy:
        """A simulation's policy: exactly what its operator's config asks for."""
        fdp, gate = cfg.feature_dp, cfg.release_gate
        return cls(
            feature_dp=fdp.enabled and method_plan(cfg).spec.feature_noise,
            min_feature_noise=fdp.noise_std,
            max_clip_norm=fdp.clip_norm,
            mechanisms=[fdp.mechanism],
            methods=[method_plan(cfg).name],
            dp_sgd=cfg.dp_sgd.enabled,
            delta=min(cfg.dp_sgd.delta, fdp.delta),
            epsilon_budget=cfg.federated.device_epsilon_budget,
            max_releases_per_pair=fdp.max_releases_per_pair,
            secure_aggregation=cfg.federated.secure_aggregation,
            release_gate=gate.enabled,
            max_gate_margin=gate.margin,
            max_gate_confidence=gate.confidence,
            gate_probe_pairs=gate.probe_pairs,
            gate_noise_copies=gate.noise_copies,
            gate_reference=gate.reference,
        )

    @classmethod
    def load(cls, path: str | Path) -> DevicePolicy:
        """A policy file: TOML (or JSON, ``.json``) with any of this model's fields at the top level; the
        rest stay default."""
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"policy file {str(path)!r} does not exist: pass an existing TOML file")
        try:
            text = path.read_text()
            return cls.model_validate(json.loads(text) if path.suffix == ".json" else tomllib.loads(text))
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
            raise PolicyError(
                f"policy file {str(path)!r} is not valid {path.suffix.lstrip('.') or 'TOML'}: {err}"
            ) from None
        except ValidationError as err:
            fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise PolicyError(f"policy file {str(path)!r}: {fields}") from None

    def save(self, path: str | Path) -> None:
        """Write this policy as JSON (a simulation hands its operator's policy to the devices this way)."""
        Path(path).write_text(self.model_dump_json(indent=2))

    def tightened(self, *, epsilon_budget: float | None = None, max_releases_per_pair: int | None = None):
        """This policy with the budget or the release cap lowered (an owner's ``deploy device`` flags); a
        value above the policy's is ignored, never applied."""
        update: dict[str, float | int] = {}
        if epsilon_budget is not None:
            update["epsilon_budget"] = min(self.epsilon_budget, float(epsilon_budget))
        if max_releases_per_pair is not None:
            own = int(max_releases_per_pair)
            update["max_releases_per_pair"] = min(self.max_releases_per_pair or own, own)
        return self.model_copy(update=update)

    def gate(self, asked: ReleaseGateConfig) -> ReleaseGateConfig:
        """The gate the device runs: the message's, with at least the policy's sample and noise copies
        (a server could ask for a probe too small to see anything; margin and confidence are refused)."""
        return asked.model_copy(
            update={
                "probe_pairs": max(asked.probe_pairs, self.gate_probe_pairs),
                "noise_copies": max(asked.noise_copies, self.gate_noise_copies),
                "reference": asked.reference or self.gate_reference,
            }
        )

    def stricter(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """``cfg`` with every numeric privacy setting at the stricter of the message and this policy: what the
        device computes with. A message that asks for less is refused before (``refusals``); this is the
        handler's own guarantee, whatever reached it."""
        fdp, dp, fed = cfg.feature_dp, cfg.dp_sgd, cfg.federated
        cap, most = fdp.max_releases_per_pair, self.max_releases_per_pair
        feature_dp = fdp.model_copy(
            update={
                "enabled": fdp.enabled or self.feature_dp,
                "noise_std": max(fdp.noise_std, self.min_feature_noise),
                "clip_norm": min(fdp.clip_norm, self.max_clip_norm),
                "delta": min(fdp.delta, self.delta),
                "max_releases_per_pair": cap if most is None else min(cap or most, most),
            }
        )
        return cfg.model_copy(
            update={
                "feature_dp": feature_dp,
                "dp_sgd": dp.model_copy(update={"delta": min(dp.delta, self.delta)}),
                "federated": fed.model_copy(
                    update={"device_epsilon_budget": min(fed.device_epsilon_budget, self.epsilon_budget)}
                ),
                "release_gate": self.gate(cfg.release_gate),
            }
        )

    def refusals(self, cfg: ExperimentConfig) -> list[Refusal]:
        """Every field of ``cfg`` that asks for less protection than this policy; empty: compute as sent."""
        out: list[Refusal] = []

        def below(ok: bool, field: str, asked: Any, floor: str) -> None:
            if not ok:
                out.append(Refusal(field, asked, floor))

        fdp, method = cfg.feature_dp, method_plan(cfg).name
        below(method in self.methods, "methods", method, f"one of {self.methods}")
        releases_noise = fdp.enabled and method_spec(method).feature_noise
        asked = fdp.enabled if not fdp.enabled else f"True, but method {method!r} releases its features un-noised"
        below(releases_noise or not self.feature_dp, "feature_dp.enabled", asked, "noised features")
        if releases_noise:
            below(fdp.noise_std >= self.min_feature_noise, "feature_dp.noise_std", fdp.noise_std,
                  f"at least {self.min_feature_noise}")  # fmt: skip
            below(fdp.clip_norm <= self.max_clip_norm, "feature_dp.clip_norm", fdp.clip_norm,
                  f"at most {self.max_clip_norm}")  # fmt: skip
            below(fdp.mechanism in self.mechanisms, "feature_dp.mechanism", fdp.mechanism, f"one of {self.mechanisms}")
            below(fdp.delta <= self.delta, "feature_dp.delta", fdp.delta, f"at most {self.delta}")
        cap, most = fdp.max_releases_per_pair, self.max_releases_per_pair
        below(most is None or (cap is not None and cap <= most), "feature_dp.max_releases_per_pair", cap,
              f"at most {self.max_releases_per_pair}")  # fmt: skip
        below(cfg.dp_sgd.enabled or not self.dp_sgd, "dp_sgd.enabled", cfg.dp_sgd.enabled, "true")
        below(cfg.dp_sgd.delta <= self.delta, "dp_sgd.delta", cfg.dp_sgd.delta, f"at most {self.delta}")
        budget = cfg.federated.device_epsilon_budget
        below(budget <= self.epsilon_budget, "federated.device_epsilon_budget", budget,
              f"at most {self.epsilon_budget}")  # fmt: skip
        below(cfg.federated.secure_aggregation or not self.secure_aggregation, "federated.secure_aggregation",
              cfg.federated.secure_aggregation, "true")  # fmt: skip
        gate = cfg.release_gate
        below(gate.enabled or not self.release_gate, "release_gate.enabled", gate.enabled, "true")
        if gate.enabled:
            below(gate.margin <= self.max_gate_margin, "release_gate.margin", gate.margin,
                  f"at most {self.max_gate_margin}")  # fmt: skip
            below(gate.confidence <= self.max_gate_confidence, "release_gate.confidence", gate.confidence,
                  f"at most {self.max_gate_confidence}")  # fmt: skip
            below(gate.reference or not self.gate_reference, "release_gate.reference", gate.reference, "true")
        return out
