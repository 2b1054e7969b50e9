"""A simulated fleet of unlike edge devices: device classes, their shares, a deadline, a trace.

A class says how fast a device computes (relative to the fleet's reference device, whose milliseconds
per training pair and per released pair on this project's model are given once), how much memory it
has, its uplink and downlink, the probability it is available in a round and the probability it drops
out mid-round. ``federated.fleet.file`` loads the classes (and any other field) from a TOML file;
without one the packaged default fleet (``default_fleet.toml``, each figure with its source) is used.
A per-device availability trace (``trace``, a CSV of ``device,round,available``) overrides the
availability probability for the rounds it lists.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_FLEET_FILE = Path(__file__).with_name("default_fleet.toml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DeviceClass(_Strict):
    """One kind of device in the fleet."""

    name: str = Field(min_length=1)
    share: float = Field(gt=0.0, le=1.0, description="share of the population in this class")
    speed: float = Field(
        gt=0.0, description="compute speed relative to the fleet's reference device (2 = twice as fast)"
    )
    memory_mb: int = Field(gt=0, description="memory a local round may use")
    uplink_mbps: float = Field(gt=0.0)
    downlink_mbps: float = Field(gt=0.0)
    availability: float = Field(ge=0.0, le=1.0, description="probability of being available in a round")
    dropout: float = Field(ge=0.0, lt=1.0, description="probability a sampled device drops out mid-round")


class FleetConfig(_Strict):
    """The fleet model of a simulation (``federated.fleet``); off unless ``enabled``."""

    enabled: bool = False
    file: str | None = Field(None, description="a TOML file of [[classes]] and any other fleet field")
    reference: str = Field("rpi4", description="the device class the ms-per-pair figures are for")
    train_ms_per_pair: float = Field(
        1.0, gt=0.0, description="reference device: milliseconds per training pair (one DP-SGD pass)"
    )
    release_ms_per_pair: float = Field(0.3, gt=0.0, description="reference device: milliseconds per released pair")
    classes: list[DeviceClass] = Field(default_factory=list, description="empty: the default fleet")
    trace: str | None = Field(None, description="CSV device,round,available (0/1): overrides availability")
    deadline_s: float = Field(
        600.0, gt=0.0, description="simulated seconds the server waits for train replies; later ones are stragglers"
    )
    target_replies: int | None = Field(
        None, ge=1, description="end the train phase when this many replies have arrived (over-commit: sample more)"
    )
    seed: int = Field(0, description="the fleet's draws (classes, availability, dropouts): not privacy noise")
    target_accuracy: float | None = Field(
        None, gt=0.0, le=1.0, description="mean task accuracy for time-to-target (none: 95 % of the best reached)"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, data: Any) -> Any:
        """Fields from ``file`` first, the config's own fields over them; no classes: the default fleet."""
        if not isinstance(data, dict) or not data.get("enabled", False):
            return data
        merged: dict[str, Any] = {}
        source = data.get("file")
        if source is not None:
            merged.update(_read_toml(Path(source), "federated.fleet.file"))
        merged.update(data)
        for key in ("file", "trace"):  # absolute: the ServerApp may run in another folder
            if merged.get(key) is not None:
                merged[key] = str(Path(merged[key]).expanduser().resolve())
        if not merged.get("classes"):
            default = _read_toml(DEFAULT_FLEET_FILE, "the default fleet")
            merged = {**default, **{k: v for k, v in merged.items() if k != "classes"}}
        return merged

    @model_validator(mode="after")
    def _shares_and_names(self) -> FleetConfig:
        if not self.enabled:
            return self
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"federated.fleet.classes: class names must be unique, got {names}")
        total = sum(c.share for c in self.classes)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"federated.fleet.classes: the shares must sum to 1, they sum to {total:.4f}: adjust each class's share"
            )
        if self.trace is not None and not Path(self.trace).is_file():
            raise ValueError(
                f"federated.fleet.trace: no file {self.trace!r} (a CSV with columns device,round,available)"
            )
        return self


def _read_toml(path: Path, field: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{field}: no file {str(path)!r} (a TOML file with [[classes]] entries)")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{field}: {str(path)!r} is not valid TOML: {err}") from None
