"""A grid: named cells, each one `mops train` run (methods x seeds on one model, data and compression), or,
with a `federated` section, one `mops federate` run per method and seed (FedPrompt vs MoPs on Flower).

Grids come from the built-in experiments (`experiments.py`) or from a TOML / YAML file:

    experiment = "table4"            # which report to write: table, layers, prompts or gating
    [base]                           # settings every cell shares
    model = "smollm2-135m"
    data = "dolly"
    methods = ["baseline", "mops", "lora", "ia3"]
    seeds = [0, 1, 2]
    train = { steps = 40, batch_size = 4, lr = 1e-2 }
    mop = { injection_layer = 10 }
    # federated = { num_clients = 10, clients_per_round = 2, rounds = 3, local_steps = 10 }
    #   (a federated cell: methods fedprompt and/or mops; any FederatedConfig field; no mop/train sections)
    [[cells]]                        # one table row / plot point each; any base key may be overridden
    name = "75%"
    compress = "sparsegpt:0.75"

A cell's key is a digest of its settings (not its name), so renaming rows or re-running a grid reuses every
finished cell.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from mops.errors import ConfigError
from mops.federated.config import FED_METHODS, FederatedConfig
from mops.training.overrides import known_fields

REPORTS = ("table", "layers", "prompts", "gating")
CELL_OWNED = {"output", "method", "model", "compress", "data", "total", "max_length", "seed"}  # set per cell/seed


@dataclass
class Cell:
    """One run: `methods` over `seeds`, paired per seed, from the same frozen parts."""

    name: str
    model: str = "smollm2-135m"
    data: str = "dolly"
    compress: str | None = None
    methods: list[str] = field(default_factory=lambda: ["baseline", "mops"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_length: int = 256
    total: int = 5000
    template: str = "plain"
    mop: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    federated: dict | None = None  # FederatedConfig fields: a federated cell (None: centralised)

    def __post_init__(self) -> None:
        if not self.seeds or not self.methods:
            raise ConfigError(f"cell {self.name!r}: needs at least one seed and one method")
        if self.federated is not None:
            self._check_federated()
            return
        mop_fields, train_fields = known_fields()
        for section, known in (("mop", mop_fields), ("train", train_fields)):
            unknown = sorted(set(getattr(self, section)) - known)
            if unknown:
                raise ConfigError(f"cell {self.name!r}: unknown {section} setting(s) {unknown}; known: {sorted(known)}")

    def _check_federated(self) -> None:
        known = {f.name for f in fields(FederatedConfig)} - CELL_OWNED
        unknown = sorted(set(self.federated) - known)
        if unknown:
            raise ConfigError(f"cell {self.name!r}: unknown federated setting(s) {unknown}; known: {sorted(known)}")
        bad = [m for m in self.methods if m not in FED_METHODS]
        if bad:
            raise ConfigError(f"cell {self.name!r}: federated methods are {', '.join(FED_METHODS)}, got {bad}")
        if self.mop or self.train:
            raise ConfigError(f"cell {self.name!r}: a federated cell takes its settings in `federated`, not mop/train")
        for seed in self.seeds:  # every setting is validated before anything runs
            self.federated_config(self.methods[0], seed, Path("."))

    def federated_config(self, method: str, seed: int, output: Path) -> FederatedConfig:
        """The `mops federate` settings of one method and seed of this (federated) cell."""
        try:
            return FederatedConfig(output=str(output), method=method, model=self.model, compress=self.compress or "",
                                   data=self.data, total=self.total, max_length=self.max_length, seed=seed,
                                   **self.federated)
        except (ConfigError, TypeError, ValueError) as err:
            raise ConfigError(f"cell {self.name!r}: federated: {err}") from None

    @property
    def key(self) -> str:
        settings = {k: v for k, v in asdict(self).items() if k != "name"}
        if self.federated is None:
            del settings["federated"]  # keeps the keys of centralised cells from before federated cells
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Grid:
    experiment: str  # report kind: table, layers, prompts or gating
    title: str
    cells: list[Cell]

    def __post_init__(self) -> None:
        if self.experiment not in REPORTS:
            raise ConfigError(f"grid experiment must be one of {REPORTS}, got {self.experiment!r}")
        if not self.cells:
            raise ConfigError("grid has no cells")
        names = [c.name for c in self.cells]
        if len(set(names)) != len(names):
            raise ConfigError(f"grid cell names must be distinct, got {names}")


def grid_from_dict(data: dict, source: str) -> Grid:
    """{experiment, title, base: {...}, cells: [{name, ...}]} -> Grid; errors name `source` and the field."""
    allowed = {f.name for f in fields(Cell)}
    base = data.get("base", {})
    cells = []
    for i, raw in enumerate(data.get("cells", [])):
        merged = {**base, **raw}
        for section in ("mop", "train", "federated"):
            if section in base or section in raw:
                merged[section] = {**base.get(section, {}), **raw.get(section, {})}
        unknown = sorted(set(merged) - allowed)
        if unknown:
            raise ConfigError(f"{source}: cells[{i}]: unknown key(s) {unknown}; known: {sorted(allowed)}")
        if "name" not in merged:
            raise ConfigError(f"{source}: cells[{i}] has no name")
        cells.append(Cell(**merged))
    try:
        return Grid(data.get("experiment", "table"), data.get("title", source), cells)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_grid(path: Path) -> Grid:
    """A grid from a .toml, .yaml or .yml file."""
    if not path.is_file():
        raise ConfigError(f"grid file {path} does not exist")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return grid_from_dict(data, str(path))
