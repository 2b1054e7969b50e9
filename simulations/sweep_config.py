"""The sweep file (``metamorphosis sweep --config SWEEP.toml``), validated once, expanded into cells.

A sweep is one or more blocks; a block is the product of its strategies (each with its own parameters,
every list a grid axis), partitionings, privacy budgets and attacks, times the sweep's seeds. Each cell is
one ordinary experiment: the sweep's base config, the sweep's ``set``, the block's ``set``, then the cell's
own values, validated as any run's config is (a value out of range is refused before the first cell
runs, naming the cell and the field). Cells are named by what they vary, so two blocks that ask for the
same experiment share one cell, and the name is the cell's run folder.

    seeds = [1, 2]
    set = ["federated.rounds=8"]          # every cell
    [[block]]
    name = "clean"
    partitionings = ["iid", "dirichlet:0.1"]
    strategies = [{ name = "fedavg" }, { name = "fedprox", proximal_mu = [0.01, 0.1] }]
    [[block]]
    name = "sign-flip"
    attacks = ["none", "sign_flip:0.2"]
    strategies = [{ name = "fedavg" }, { name = "krum", num_malicious_nodes = 2 }]
"""

from __future__ import annotations

import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fl_metamorphosis.config import ConfigError, ExperimentConfig, StrategyConfig, build_config, load_config

ATTACKS = ("sign_flip", "scale", "gaussian", "label_flip", "stale")


class StrategyGrid(BaseModel):
    """A strategy and its parameters: a list is a grid axis, a scalar a fixed value."""

    model_config = ConfigDict(extra="allow")
    name: str

    @model_validator(mode="after")
    def _known(self) -> StrategyGrid:
        StrategyConfig(name=self.name)  # the name is one of Flower's strategies
        for key in self.model_extra or {}:
            if key == "name" or key not in StrategyConfig.model_fields:
                known = ", ".join(k for k in StrategyConfig.model_fields if k != "name")
                raise ValueError(f"strategy {self.name!r}: unknown parameter {key!r} (parameters: {known})")
        return self

    def settings(self) -> list[dict[str, Any]]:
        """Every combination of the parameters' values, in the file's order."""
        axes = {k: v if isinstance(v, list) else [v] for k, v in (self.model_extra or {}).items()}
        return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def _check_spec(value: str, kinds: tuple[str, ...], what: str, example: str) -> str:
    kind, _, number = value.partition(":")
    if kind not in kinds:
        raise ValueError(f"{what} {value!r}: the kind must be one of {', '.join(kinds)} (e.g. {example!r})")
    if number:
        try:
            float(number)
        except ValueError:
            raise ValueError(f"{what} {value!r}: {number!r} after ':' is not a number (e.g. {example!r})") from None
    return value


class SweepBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    strategies: list[StrategyGrid] = Field(min_length=1)
    partitionings: list[str] = Field(["iid"], min_length=1, description="iid, dirichlet:ALPHA, pathological:K")
    budgets: list[float] | None = Field(
        None, description="device epsilon budgets (dp_sgd.target_epsilon and the device's cap); None: the base's"
    )
    attacks: list[str] = Field(["none"], min_length=1, description="none or ATTACK:SHARE, e.g. sign_flip:0.2")
    set: list[str] = Field([], description="overrides for this block's cells")

    @field_validator("partitionings")
    @classmethod
    def _partitionings(cls, values: list[str]) -> list[str]:
        kinds = ("iid", "dirichlet", "pathological")
        return [_check_spec(v, kinds, "partitioning", "dirichlet:0.1") for v in values]

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, values: list[str]) -> list[str]:
        for v in values:
            _check_spec(v, ("none", *ATTACKS), "attack", "sign_flip:0.2")
            if v != "none" and ":" not in v:
                raise ValueError(f"attack {v!r}: give the share of attacking devices, e.g. '{v}:0.2'")
        return values

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and (not values or min(values) <= 0):
            raise ValueError("budgets: give one or more positive epsilons, or leave it out")
        return values


class SearchConfig(BaseModel):
    """``sweep --search``: an Optuna study over parameter ranges instead of a grid (simulations/search.py)."""

    model_config = ConfigDict(extra="forbid")
    strategy: str
    ranges: dict[str, list[float]] = Field(min_length=1, description="parameter -> [low, high] (log scale)")
    trials: int = Field(10, ge=1)
    minutes: float | None = Field(None, gt=0, description="stop starting trials after this many minutes")
    partitioning: str = "iid"
    attack: str = "none"
    seed: int = 0
    set: list[str] = []


class SweepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str | None = Field(None, description="an experiment config file, relative to the sweep file")
    set: list[str] = Field([], description="overrides for every cell")
    seeds: list[int] = Field([0], min_length=1)
    parallel: int = Field(1, ge=1, le=64, description="cells run at once (each is a simulation of its own)")
    block: list[SweepBlock] = Field([], description="grid blocks ([[block]] tables)")
    search: SearchConfig | None = None

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {seeds}: give distinct seeds")
        return seeds


@dataclass(frozen=True)
class Cell:
    """One experiment of the sweep; ``setting`` is everything but the seed (what seeds are pooled over)."""

    key: str
    setting: str
    blocks: tuple[str, ...]
    strategy: str
    params: tuple[tuple[str, Any], ...]
    partitioning: str
    budget: float | None
    attack: str
    seed: int
    cfg: ExperimentConfig = field(compare=False, hash=False, repr=False)


def _word(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _setting_name(strategy: str, params: dict[str, Any], partitioning: str, budget, attack: str) -> str:
    parts = [strategy, *(f"{k}={_word(v)}" for k, v in params.items()), partitioning.replace(":", "-")]
    if budget is not None:
        parts.append(f"eps={_word(budget)}")
    if attack != "none":
        parts.append(attack.replace(":", "-"))
    return "_".join(parts)


def cell_overrides(strategy: str, params: dict[str, Any], partitioning: str, budget, attack: str) -> list[str]:
    out = [f"federated.strategy.name={json.dumps(strategy)}"]
    out += [f"federated.strategy.{k}={json.dumps(v)}" for k, v in params.items()]
    kind, _, number = partitioning.partition(":")
    out.append(f"federated.partitioning={json.dumps(kind)}")
    if number and kind == "dirichlet":
        out.append(f"federated.dirichlet_alpha={number}")
    if number and kind == "pathological":
        out.append(f"federated.classes_per_device={int(float(number))}")
    if budget is not None:
        out += [f"dp_sgd.target_epsilon={budget}", f"federated.device_epsilon_budget={budget}"]
    kind, _, share = attack.partition(":")
    out.append(f"federated.poisoning.attack={json.dumps(kind)}")
    out.append(f"federated.poisoning.share={share or 0}")
    return out


def read_sweep(path: Path) -> tuple[SweepConfig, ExperimentConfig]:
    """The sweep file and its base experiment, or a ConfigError that names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {str(path)!r}: no such sweep file (the default one: configs/sweep.toml)")
    try:
        sweep = SweepConfig.model_validate(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"sweep file {str(path)!r} is not valid TOML: {err}") from None
    except ValidationError as err:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in err.errors()]
        raise ConfigError(f"invalid sweep file {path}:\n" + "\n".join(lines)) from None
    base = load_config(path.parent / sweep.base if sweep.base else None, sweep.set)
    return sweep, base


def expand(sweep: SweepConfig, base: ExperimentConfig, extra: list[str] | None = None) -> list[Cell]:
    """Every cell of the grid blocks, each config validated; cells two blocks share appear once."""
    cells: dict[str, Cell] = {}
    tree = base.model_dump()
    for block in sweep.block:
        budgets = block.budgets or [None]
        for grid, partitioning, budget, attack, seed in itertools.product(
            block.strategies, block.partitionings, budgets, block.attacks, sweep.seeds
        ):
            for params in grid.settings():
                setting = _setting_name(grid.name, params, partitioning, budget, attack)
                key = f"{setting}_seed{seed}"
                if key in cells:
                    old = cells[key]
                    cells[key] = Cell(**{**old.__dict__, "blocks": (*old.blocks, block.name)})
                    continue
                overrides = [*block.set, *cell_overrides(grid.name, params, partitioning, budget, attack)]
                try:
                    cfg = build_config(tree, [*overrides, f"train.seed={seed}", *(extra or [])])
                except ConfigError as err:
                    raise ConfigError(f"sweep block {block.name!r}, cell {key}: {err}") from None
                cells[key] = Cell(
                    key, setting, (block.name,), grid.name, tuple(params.items()), partitioning, budget, attack,
                    seed, cfg,
                )  # fmt: skip
    return list(cells.values())
