"""The experiment configuration: presets, validation, `--set` overrides, stage keys.

One YAML file describes a whole run. It is parsed into frozen dataclasses (one per stage) whose `from_dict` rejects
unknown keys and whose `__post_init__` checks ranges, so a typo fails before anything runs, with the dotted name of
the field (`grid.fractoins: unknown key; did you mean 'fractions'?`). The model sections (`essnet`, `unet`) are
validated by the models' own config classes (`EssNetConfig`, `UNetTrainConfig`).

Stage keys: each stage is keyed by the hash of the config parts it depends on (`stage_key`), so changing only grid
axes (seeds, fractions) reuses ingest, EssNet and the synthetic stores.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from datasets.errors import ConfigError

PRESETS = ("quick", "study", "paper")
GENERATORS = ("none", "cyclegan", "essnet")


def _check_keys(cls: type, data: dict, where: str) -> None:
    """Reject keys that are not fields of `cls`, suggesting the closest name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{where}{'.' if where else ''}{key}: unknown key{hint}")


def _need(cond: bool, name: str, value: Any, expected: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {value!r} is out of range; expected {expected}")


def _typed(name: str, value: Any, typ: type | tuple[type, ...]) -> Any:
    """Coerce ints to floats where a float is expected, refuse bools posing as numbers and other wrong types."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and typ is not bool:
        raise ConfigError(f"{name}: expected {getattr(typ, '__name__', typ)}, got the boolean {value!r}")
    if not isinstance(value, typ):
        want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ConfigError(f"{name}: expected {want}, got {type(value).__name__} {value!r}")
    return value


@dataclass(frozen=True)
class PhantomConfig:
    """The CHAOS-layout phantom written when no --data is given."""

    ct_patients: int = 20
    mr_patients: int = 20
    seed: int = 0
    ct_size: int = 512
    mr_size: int = 256
    ct_slices: tuple[int, int] = (80, 100)
    mr_slices: tuple[int, int] = (26, 34)

    def __post_init__(self) -> None:
        for f in ("ct_patients", "mr_patients", "seed", "ct_size", "mr_size"):
            _typed(f"data.phantom.{f}", getattr(self, f), int)
        _need(self.ct_patients >= 2, "data.phantom.ct_patients", self.ct_patients, ">= 2")
        _need(self.mr_patients >= 3, "data.phantom.mr_patients", self.mr_patients, ">= 3 (train, val and test)")
        _need(32 <= self.ct_size <= 1024, "data.phantom.ct_size", self.ct_size, "32..1024")
        _need(32 <= self.mr_size <= 1024, "data.phantom.mr_size", self.mr_size, "32..1024")
        for f in ("ct_slices", "mr_slices"):
            v = getattr(self, f)
            _need(len(v) == 2 and 4 <= v[0] <= v[1] <= 500, f"data.phantom.{f}", list(v), "[min, max] with 4 <= min <= max")


@dataclass(frozen=True)
class DataConfig:
    """Where the CHAOS tree comes from: `phantom` (written into the experiment) or a path to a real download."""

    source: str = "phantom"
    phantom: PhantomConfig = field(default_factory=PhantomConfig)

    def __post_init__(self) -> None:
        _typed("data.source", self.source, str)


@dataclass(frozen=True)
class IngestConfig:
    size: int = 256
    sequence: str = "T2SPIR"
    n_test_mr: int = 4
    n_val_ct: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        _typed("ingest.size", self.size, int)
        _need(self.size >= 16 and self.size % 16 == 0, "ingest.size", self.size, "a multiple of 16, >= 16")
        _need(self.sequence in ("T2SPIR", "T1DUAL_InPhase", "T1DUAL_OutPhase"), "ingest.sequence", self.sequence,
              "T2SPIR, T1DUAL_InPhase or T1DUAL_OutPhase")
        _need(_typed("ingest.n_test_mr", self.n_test_mr, int) >= 1, "ingest.n_test_mr", self.n_test_mr, ">= 1")
        _need(_typed("ingest.n_val_ct", self.n_val_ct, int) >= 0, "ingest.n_val_ct", self.n_val_ct, ">= 0")


@dataclass(frozen=True)
class EssNetStageConfig:
    """How the synthesis stage runs; `model` is validated by `models.essnet.EssNetConfig`."""

    replicates: int = 1
    num_gpus: float = 1
    num_cpus: float = 1
    ct_subsample: float = 1.0
    model: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _need(_typed("essnet.replicates", self.replicates, int) >= 1, "essnet.replicates", self.replicates, ">= 1")
        _need(_typed("essnet.num_gpus", self.num_gpus, (int, float)) >= 0, "essnet.num_gpus", self.num_gpus, ">= 0")
        _need(_typed("essnet.num_cpus", self.num_cpus, (int, float)) > 0, "essnet.num_cpus", self.num_cpus, "> 0")
        _need(0 < _typed("essnet.ct_subsample", self.ct_subsample, float) <= 1, "essnet.ct_subsample",
              self.ct_subsample, "in (0, 1]")


@dataclass(frozen=True)
class GenerateConfig:
    """The generation actor pool. A shard is one CT patient's slices (the real_ct store's own shards)."""

    actors: int = 2
    num_gpus_per_actor: float = 0
    num_cpus_per_actor: float = 1
    batch_size: int = 32

    def __post_init__(self) -> None:
        _need(_typed("generate.actors", self.actors, int) >= 1, "generate.actors", self.actors, ">= 1")
        _need(_typed("generate.num_gpus_per_actor", self.num_gpus_per_actor, (int, float)) >= 0,
              "generate.num_gpus_per_actor", self.num_gpus_per_actor, ">= 0")
        _need(_typed("generate.num_cpus_per_actor", self.num_cpus_per_actor, (int, float)) > 0,
              "generate.num_cpus_per_actor", self.num_cpus_per_actor, "> 0")
        _need(_typed("generate.batch_size", self.batch_size, int) >= 1, "generate.batch_size", self.batch_size, ">= 1")


@dataclass(frozen=True)
class GridConfig:
    """The Tune grid: generator x synthetic fraction x seed (x fold x n_real).

    `fractions` are synthetic fractions f of the training mix: n_syn = round(n_real * f / (1 - f)); `n_syn` (absolute
    counts, e.g. the paper's 350 real + up to 714 synthetic) may be given instead. The real-only baseline (generator
    "none", f = 0) runs once per seed, fold and n_real, not once per generator.
    """

    generators: tuple[str, ...] = GENERATORS
    fractions: tuple[float, ...] = (0.25, 0.5, 0.67, 0.8)
    n_syn: tuple[int, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    folds: int = 1
    fold_ids: tuple[int, ...] = ()
    n_real: tuple[int, ...] = ()
    real_patients: int = 0
    synthetic_filter: str = "liver"
    quality_threshold: float = 0.5
    max_failures: int = 2
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_concurrent: int = 0

    def __post_init__(self) -> None:
        for g in self.generators:
            _need(g in GENERATORS, "grid.generators", g, f"one of {', '.join(GENERATORS)}")
        _need(len(self.generators) > 0, "grid.generators", list(self.generators), "at least one generator")
        for f in self.fractions:
            _need(0 <= _typed("grid.fractions", f, float) < 1, "grid.fractions", f, "0 <= f < 1")
        for n in self.n_syn:
            _need(_typed("grid.n_syn", n, int) >= 0, "grid.n_syn", n, ">= 0")
        _need(not (self.fractions and self.n_syn), "grid.n_syn", list(self.n_syn),
              "either grid.fractions or grid.n_syn, not both")
        for s in self.seeds:
            _typed("grid.seeds", s, int)
        _need(len(self.seeds) > 0, "grid.seeds", list(self.seeds), "at least one seed")
        _need(_typed("grid.folds", self.folds, int) >= 1, "grid.folds", self.folds, ">= 1")
        for k in self.fold_ids:
            _need(0 <= _typed("grid.fold_ids", k, int) < self.folds, "grid.fold_ids", k, f"0 <= fold < {self.folds}")
        for n in self.n_real:
            _need(_typed("grid.n_real", n, int) >= 1, "grid.n_real", n, ">= 1")
        _need(_typed("grid.real_patients", self.real_patients, int) >= 0, "grid.real_patients",
              self.real_patients, ">= 0 (0 = all training patients)")
        _need(self.synthetic_filter in ("none", "liver", "quality"), "grid.synthetic_filter", self.synthetic_filter,
              "none, liver or quality")
        _need(0 <= _typed("grid.quality_threshold", self.quality_threshold, float) <= 1, "grid.quality_threshold",
              self.quality_threshold, "in [0, 1]")
        _need(_typed("grid.max_failures", self.max_failures, int) >= 0, "grid.max_failures", self.max_failures, ">= 0")
        _need(_typed("grid.cpus_per_trial", self.cpus_per_trial, (int, float)) > 0, "grid.cpus_per_trial",
              self.cpus_per_trial, "> 0")
        _need(_typed("grid.gpus_per_trial", self.gpus_per_trial, (int, float)) >= 0, "grid.gpus_per_trial",
              self.gpus_per_trial, ">= 0 (fractions allowed)")
        _need(_typed("grid.max_concurrent", self.max_concurrent, int) >= 0, "grid.max_concurrent",
              self.max_concurrent, ">= 0 (0 = as many as fit)")

    @property
    def synthetic_generators(self) -> tuple[str, ...]:
        return tuple(g for g in self.generators if g != "none")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole run. Sections mirror the stages: data -> ingest -> essnet -> generate -> grid (unet per trial)."""

    preset: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    essnet: EssNetStageConfig = field(default_factory=EssNetStageConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    unet: dict = field(default_factory=dict)
    debug: dict = field(default_factory=dict)  # fault-injection hooks for tests; never part of a stage key

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


_SECTIONS: dict[str, type] = {
    "data": DataConfig, "ingest": IngestConfig, "essnet": EssNetStageConfig,
    "generate": GenerateConfig, "grid": GridConfig,
}
_NESTED: dict[tuple[type, str], type] = {(DataConfig, "phantom"): PhantomConfig}


def _build(cls: type, data: dict, where: str) -> Any:
    _check_keys(cls, data, where)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = _NESTED.get((cls, f.name))
        if sub is not None:
            value = _build(sub, value or {}, f"{where}.{f.name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a list where a scalar belongs, and similar
        raise ConfigError(f"{where}: {e}") from None


def from_dict(data: dict) -> ExperimentConfig:
    """Build and validate an ExperimentConfig, including the model sections.

    Raises:
        ConfigError: naming the dotted field of the first unknown key or bad value.
    """
    _check_keys(ExperimentConfig, data, "")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name in _SECTIONS:
            kwargs[name] = _build(_SECTIONS[name], value or {}, name)
        elif name in ("unet", "debug"):
            kwargs[name] = dict(value or {})
        else:
            kwargs[name] = value
    _typed("preset", kwargs.get("preset", "custom"), str)
    cfg = ExperimentConfig(**kwargs)
    essnet_model_config(cfg)  # validate the model sections now, not inside a Ray task
    unet_config(cfg, seed=0)
    return cfg


def essnet_model_config(cfg: ExperimentConfig, *, seg_branch: bool = True, seed: int | None = None):
    """The `models.essnet.EssNetConfig` for one generator (essnet: seg_branch on; cyclegan: off)."""
    from models.essnet import EssNetConfig

    data = dict(cfg.essnet.model)
    data["seg_branch"] = seg_branch
    if seed is not None:
        data["seed"] = seed
    try:
        return EssNetConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"essnet.model.{e}") from None


def unet_config(cfg: ExperimentConfig, *, seed: int):
    """The `models.train_unet.UNetTrainConfig` of one trial."""
    from models.train_unet import UNetTrainConfig

    data = dict(cfg.unet)
    data["seed"] = seed
    try:
        return UNetTrainConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"unet.{e}") from None


def _plain(obj: Any) -> Any:
    """Tuples to lists, recursively, so the config round-trips through YAML and JSON."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return Path(str(resources.files("grid") / "presets" / f"{name}.yaml"))


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--set a.b=value` overrides (value parsed as YAML: `grid.seeds=[0,1,2]`)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. grid.seeds=[0,1,2]")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
        node[parts[-1]] = value
    return out


def load_config(config: str | None = None, preset: str | None = None, overrides: list[str] | None = None,
                data_dir: str | None = None) -> ExperimentConfig:
    """Resolve a run's config: a preset (default quick), then a config file on top, then `--set` overrides."""
    base = read_yaml(preset_path(preset or "quick"))
    if config:
        base = _merge(base, read_yaml(config))
    if data_dir:
        base = _merge(base, {"data": {"source": str(data_dir)}})
    return from_dict(apply_overrides(base, overrides or []))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_hash(obj: Any) -> str:
    """A short stable hash of any JSON-able config part."""
    blob = json.dumps(_plain(obj), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stage_parts(cfg: ExperimentConfig) -> dict[str, dict]:
    """What each stage depends on (its own section plus everything upstream)."""
    d = cfg.to_dict()
    ingest = {"data": d["data"], "ingest": d["ingest"]}
    essnet = {**ingest, "essnet": {k: v for k, v in d["essnet"].items() if k not in ("num_gpus", "num_cpus")}}
    generate = essnet  # a synthetic store depends on its generator only (batch size and actors change nothing)
    trials = {**generate, "unet": d["unet"],
              "grid": {k: d["grid"][k] for k in ("synthetic_filter", "quality_threshold", "folds", "real_patients")}}
    return {"ingest": ingest, "essnet": essnet, "generate": generate, "trials": trials}


def stage_key(cfg: ExperimentConfig, stage: str) -> str:
    return config_hash(stage_parts(cfg)[stage])


def diff_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two plain config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += diff_fields(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if _plain(old) == _plain(new) else [f"{prefix} ({_plain(old)!r} -> {_plain(new)!r})"]


def dump_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
