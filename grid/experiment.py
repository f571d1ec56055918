"""The experiment directory: one place holding everything of one run (see docs/ARCHITECTURE.md).

Stage records (`stages/<stage>.json`) are written last, after a stage's outputs, and carry the key (hash of the config
parts the stage depends on). A stage is done when its record exists with the current key. Opening an experiment with
a config whose upstream parts differ from what produced existing results is refused, naming the fields.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import yaml

from datasets import uri as U
from datasets.errors import ConfigError
from grid.config import ExperimentConfig, diff_fields, dump_yaml, from_dict, stage_key, stage_parts

STAGES = ("ingest", "essnet", "generate", "grid", "analysis")


@dataclass(frozen=True)
class Experiment:
    root: str

    def path(self, *parts: str) -> str:
        return U.join(self.root, *parts)

    # --- layout -----------------------------------------------------------------------------------------------
    @property
    def stores(self) -> str:
        return self.path("stores")

    def store(self, name: str) -> str:
        return self.path("stores", name)

    def synthetic_store(self, generator: str, replicate: int) -> str:
        return self.path("stores", "synthetic_mr", f"{generator}-r{replicate}")

    def essnet_dir(self, generator: str, replicate: int) -> str:
        return self.path("essnet", f"{generator}-r{replicate}")

    @property
    def results_dir(self) -> str:
        return self.path("results")

    @property
    def curves_dir(self) -> str:
        return self.path("curves")

    @property
    def tune_dir(self) -> str:
        return self.path("tune")

    # --- config -----------------------------------------------------------------------------------------------
    def saved_config(self) -> ExperimentConfig | None:
        if not U.exists(self.path("config.yaml")):
            return None
        return from_dict(yaml.safe_load(U.read_text(self.path("config.yaml"))))

    def save_config(self, cfg: ExperimentConfig) -> None:
        U.write_text(self.path("config.yaml"), dump_yaml(cfg))
        U.write_text(self.path("config_hash.txt"), stage_key(cfg, "trials") + "\n")

    def check_compatible(self, cfg: ExperimentConfig) -> None:
        """Refuse a config that would mix incompatible results; allow new grid axes and new downstream settings.

        Rules: once trials have results, the parts trials depend on (data, ingest, EssNet, generation, U-Net) are
        frozen; before that, a changed EssNet setting simply retrains (the stage keys differ).

        Raises:
            ConfigError: listing the fields that differ.
        """
        old = self.saved_config()
        if old is None:
            return
        old_parts, new_parts = stage_parts(old), stage_parts(cfg)
        if self.has_results() and old_parts["trials"] != new_parts["trials"]:
            fields = diff_fields(old_parts["trials"], new_parts["trials"])
            raise ConfigError(
                f"{self.root} already holds results made with another configuration; these fields differ: "
                + "; ".join(fields) + ". Use a new --exp for them, or change only grid axes (seeds, fractions, "
                "generators, n_real, fold_ids).")
        if self.stage_done("ingest", stage_key(old, "ingest")) and old_parts["ingest"] != new_parts["ingest"]:
            fields = diff_fields(old_parts["ingest"], new_parts["ingest"])
            raise ConfigError(f"{self.root}: its slice stores were ingested with other data settings; these fields "
                              "differ: " + "; ".join(fields) + ". Use a new --exp.")

    def has_results(self) -> bool:
        return any(n.endswith(".parquet") for n in U.listdir(self.results_dir))

    # --- stage records ----------------------------------------------------------------------------------------
    def stage_record(self, stage: str) -> dict | None:
        p = self.path("stages", f"{stage}.json")
        return U.read_json(p) if U.exists(p) else None

    def stage_done(self, stage: str, key: str) -> bool:
        rec = self.stage_record(stage)
        return rec is not None and rec.get("key") == key

    def mark_done(self, stage: str, key: str, **info) -> None:
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        U.write_json(self.path("stages", f"{stage}.json"), {"stage": stage, "key": key, "done_at": now, **info})
