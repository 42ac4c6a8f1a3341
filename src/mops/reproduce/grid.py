"""A grid: named cells, each one `mops train` run (methods x seeds on one model, data and compression), or,
with a `federated` section, one `mops federate` run per method and seed (FedPrompt vs MoPs on Flower).

Grids come from the built-in experiments (`experiments.py`) or from a TOML / YAML file:

    experiment = "table4"            # which report to write: table, layers, prompts, gating or budget
    [base]                           # settings every cell shares
    model = "smollm2-135m"
    data = "dolly"
    methods = ["baseline", "mops", "lora", "ia3"]
    seeds = [0, 1, 2]
    train = { steps = 40, batch_size = 4, lr = 1e-2 }
    mop = { injection_layer = 10 }
    # federated = { num_clients = 10, clients_per_round = 2, rounds = 3, local_steps = 10 }
    #   (a federated cell: methods fedprompt and/or mops; FederationConfig fields; mop and train as above,
    #   so federated and centralised cells train alike)
    [[cells]]                        # one table row / plot point each; any base key may be overridden
    name = "75%"
    compress = "sparsegpt:0.75"

Every key is a field of ModelConfig / DataConfig (flat), MoPConfig (`mop`), TrainConfig (`train`) or
FederationConfig (`federated`), validated by those dataclasses. A cell's key is a digest of its settings (not
its name), so renaming rows or re-running a grid reuses every finished cell.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from mops.data.config import DataConfig
from mops.errors import ConfigError
from mops.federated.config import FederatedRun, FederationConfig
from mops.models.config import ModelConfig
from mops.training.config import TrainConfig
from mops.training.stages import METHOD_REVISION
from mops.tuners.mops.config import MoPConfig
from mops.tuners.registry import CENTRALISED, FEDERATED, check_order

REPORTS = ("table", "layers", "prompts", "gating", "budget")
RUN_KEYS = {f.name: cls for cls in (ModelConfig, DataConfig) for f in fields(cls)}  # a cell's flat keys
# what cell keys held before tasks, dtype, device and skip_invalid were cell settings: those enter a cell's key
# only when set, so every earlier cell keeps its key (and its finished results)
_KEYED_WHEN_SET = ("tasks", "skip_invalid", "dtype", "device")


def _build(cls: type, values: dict, what: str):
    """A config from a cell's values; bad names, types and values name the cell's section."""
    try:
        return cls(**values)
    except (ConfigError, TypeError, ValueError) as err:
        raise ConfigError(f"{what}: {err}; known: {', '.join(f.name for f in fields(cls))}") from None


@dataclass
class Cell:
    """One run: `methods` over `seeds`, paired per seed, from the same frozen parts. `mop` and `train` are
    MoPConfig / TrainConfig fields; `federated` (FederationConfig fields) makes it a federated cell."""

    name: str
    methods: list[str] = field(default_factory=lambda: ["baseline", "mops"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mop: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    federated: dict | None = None

    def __post_init__(self) -> None:
        if not self.seeds or not self.methods:
            raise ConfigError(f"cell {self.name!r}: needs at least one seed and one method")
        allowed = FEDERATED if self.federated is not None else CENTRALISED
        bad = [m for m in self.methods if m not in allowed]
        if bad:
            kind = "federated" if self.federated is not None else "centralised"
            raise ConfigError(f"cell {self.name!r}: {kind} methods are {', '.join(allowed)}, got {bad}")
        check_order(self.methods)
        # every setting is validated before anything runs, against the same fields as `mops train`
        _build(MoPConfig, self.mop, f"cell {self.name!r}: mop")
        _build(TrainConfig, self.train, f"cell {self.name!r}: train")
        if self.federated is not None:
            _build(FederationConfig, self.federated, f"cell {self.name!r}: federated")

    def federated_run(self, method: str, seed: int, output: Path) -> FederatedRun:
        """The `mops federate` run of one method and seed of this (federated) cell."""
        return FederatedRun(output=str(output), method=method, seed=seed, model=self.model, data=self.data,
                            mop=MoPConfig(**self.mop), train=TrainConfig(**self.train),
                            federation=FederationConfig(**(self.federated or {})))

    @property
    def key(self) -> str:
        """Digest of the cell's settings (not its name)."""
        settings: dict = {"model": self.model.model, "data": self.data.data, "compress": self.model.compress,
                          "methods": self.methods, "seeds": self.seeds, "max_length": self.data.max_length,
                          "total": self.data.total, "template": self.data.template, "mop": self.mop,
                          "train": self.train}
        defaults = {**asdict(ModelConfig()), **asdict(DataConfig())}
        run = {**asdict(self.model), **asdict(self.data)}
        settings |= {k: run[k] for k in _KEYED_WHEN_SET if run[k] != defaults[k]}
        settings["revision"] = METHOD_REVISION  # cells trained before methods started from copies are redone
        if self.federated is not None:
            settings["federated"] = self.federated
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Grid:
    experiment: str  # report kind: table, layers, prompts, gating or budget
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


def cell_from_dict(raw: dict, where: str) -> Cell:
    """A cell from its flat keys: name, methods, seeds, mop, train, federated, and any ModelConfig /
    DataConfig field (model, compress, data, total, max_length ...)."""
    sections = {"name", "methods", "seeds", "mop", "train", "federated"}
    unknown = sorted(set(raw) - sections - set(RUN_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(sections | set(RUN_KEYS))}")
    if "name" not in raw:
        raise ConfigError(f"{where} has no name")
    tables = sorted(k for k in RUN_KEYS if isinstance(raw.get(k), dict))
    if tables:
        raise ConfigError(f"{where}: {', '.join(tables)} must be a value, not a table: model and data settings "
                          f"are flat keys of the cell ({', '.join(sorted(RUN_KEYS))})")
    run = {cls: {k: v for k, v in raw.items() if RUN_KEYS.get(k) is cls} for cls in (ModelConfig, DataConfig)}
    return Cell(**{k: v for k, v in raw.items() if k in sections},
                model=_build(ModelConfig, run[ModelConfig], f"{where}: model"),
                data=_build(DataConfig, run[DataConfig], f"{where}: data"))


def grid_from_dict(data: dict, source: str) -> Grid:
    """{experiment, title, base: {...}, cells: [{name, ...}]} -> Grid; errors name `source` and the field."""
    base = data.get("base", {})
    cells = []
    for i, raw in enumerate(data.get("cells", [])):
        merged = {**base, **raw}
        for section in ("mop", "train", "federated"):
            if section in base or section in raw:
                merged[section] = {**base.get(section, {}), **raw.get(section, {})}
        try:
            cells.append(cell_from_dict(merged, f"cells[{i}]"))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
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
