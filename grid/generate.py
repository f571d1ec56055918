"""Stage 3: translate every CT slice into synthetic MR with a pool of Ray actors, one Parquet shard per CT patient.

Each `Translator` actor loads its generator once and then takes whole shards (a CT patient's slices, the real_ct
store's own shards). The output store commits a shard only when its manifest is written after the data file, so:
a shard already committed is skipped; an actor that dies has its shard handed to a fresh actor and redone (the torn
file, if any, is never counted); a shard is never written twice. Actors are used directly rather than through Ray
Data, whose actor pools hang when they hold every CPU the read/write tasks need.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time

import numpy as np

from datasets import uri as U
from datasets.errors import EssgridError
from grid.config import ExperimentConfig
from grid.experiment import Experiment
from grid.stages import essnet_key, generator_runs

log = logging.getLogger(__name__)

CT_COLUMNS = ["patient_id", "slice_index", "image", "mask", "has_liver", "spacing", "native_shape"]
MAX_SHARD_RETRIES = 3


class Translator:
    """Holds one generator (netG_A, and netS when there is one) and translates whole shards."""

    def __init__(self, exp_root: str, generator: str, replicate: int, batch_size: int, sequence: str,
                 debug: dict | None = None):
        import torch

        from models.translate import load_generator

        self.exp = Experiment(exp_root)
        self.generator, self.replicate, self.batch_size, self.sequence = generator, replicate, batch_size, sequence
        self.debug = debug or {}
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        ckpt = U.join(self.exp.essnet_dir(generator, replicate), "checkpoint.pt")
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        if U.is_remote(ckpt):  # load from a local copy, then drop it: the weights live in memory from here on
            tmp = tempfile.mkdtemp(prefix="essgrid-gen-")
            try:
                local = os.path.join(tmp, "checkpoint.pt")
                with open(local, "wb") as f:
                    f.write(U.read_bytes(ckpt))
                self.model = load_generator(local, self.device)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            self.model = load_generator(ckpt, self.device)

    def run_shard(self, shard: str, store_key: str) -> dict:
        """Translate CT patient `shard` and commit it to the synthetic store; returns timings."""
        import pyarrow.compute as pc

        from datasets.store import SliceStore, tensor_column_to_numpy
        from models.translate import translate

        t0 = time.perf_counter()
        ct = SliceStore(self.exp.store("real_ct")).read(columns=CT_COLUMNS, filter=pc.field("patient_id") == shard)
        order = np.argsort(ct.column("slice_index").to_numpy(), kind="stable")
        ct = ct.take(order)
        images = tensor_column_to_numpy(ct, "image").astype(np.float32)
        masks = tensor_column_to_numpy(ct, "mask").astype(np.uint8)
        t_read = time.perf_counter()
        self._maybe_die(shard)
        out = translate(self.model, images, masks, batch_size=self.batch_size, device=self.device)
        t_gen = time.perf_counter()
        table = synthetic_table(ct, out, self.generator, self.replicate, self.sequence, store_key)
        store = SliceStore(self.exp.synthetic_store(self.generator, self.replicate), config_hash=store_key,
                           kind="synthetic_mr")
        store.write_shard(shard, table)
        t_write = time.perf_counter()
        return {"shard": shard, "rows": int(table.num_rows), "read_s": t_read - t0, "translate_s": t_gen - t_read,
                "write_s": t_write - t_gen}

    def _maybe_die(self, shard: str) -> None:
        """Test hook (config `debug.kill_actor_on_shard`): the actor process exits mid-shard, once."""
        if self.debug.get("kill_actor_on_shard") != shard:
            return
        marker = self.exp.path("debug", f"killed-{self.generator}-r{self.replicate}-{shard}")
        if not U.exists(marker):
            U.write_text(marker, "1")
            os._exit(1)


def synthetic_table(ct, out, generator: str, replicate: int, sequence: str, store_key: str):
    """Synthetic MR rows: the CT slice's mask carried over, its provenance kept (source_patient)."""
    from datasets.store import slices_to_table

    n = ct.num_rows
    pids = ct.column("patient_id").to_pylist()
    return slices_to_table(
        patient_id=pids,
        slice_index=ct.column("slice_index").to_numpy(),
        modality="MR", sequence=sequence, origin="synthetic", generator=generator, replicate=replicate,
        source_patient=pids, split="train",
        image=np.asarray(out.fake_B, dtype=np.float32),
        mask=np.asarray(out.masks, dtype=np.uint8),
        spacing=np.asarray(ct.column("spacing").to_pylist(), dtype=np.float32).reshape(n, 3),
        native_shape=np.asarray(ct.column("native_shape").to_pylist(), dtype=np.int32).reshape(n, 2),
        mask_native=None,
        quality=np.asarray(out.quality, dtype=np.float32),
        config_hash=store_key,
    )


def run_generate(exp: Experiment, cfg: ExperimentConfig, say=print) -> dict:
    """Fill every synthetic store the grid needs; returns per-store timing figures."""
    import ray

    from datasets.store import SliceStore

    ct_store = SliceStore(exp.store("real_ct"))
    shards = ct_store.committed_shards()
    figures = {}
    g = cfg.generate
    actor_cls = ray.remote(Translator)
    for gen, rep in generator_runs(cfg):
        key = essnet_key(cfg, gen, rep)
        name = f"{gen}-r{rep}"
        if exp.stage_done(f"generate-{name}", key):
            say(f"[generate] {name}: done earlier")
            continue
        store = SliceStore(exp.synthetic_store(gen, rep), config_hash=key, kind="synthetic_mr", create=True)
        torn = store.discard_uncommitted()  # only the driver repairs, before any actor writes
        if torn:
            say(f"[generate] {name}: removed {len(torn)} torn or temporary file(s) left by an interrupted run")
        todo = [s for s in shards if not store.is_committed(s)]
        say(f"[generate] {name}: {len(shards) - len(todo)} of {len(shards)} shards done earlier; "
            f"{len(todo)} to translate with {min(g.actors, max(1, len(todo)))} actor(s)")
        t0 = time.perf_counter()
        stats = _run_pool(actor_cls, exp, gen, rep, key, todo, cfg, say) if todo else []
        store.merge_manifests()
        wall = time.perf_counter() - t0
        rows = sum(s["rows"] for s in stats)
        write = sum(s["write_s"] for s in stats)
        busy = sum(s["read_s"] + s["translate_s"] + s["write_s"] for s in stats) or 1.0
        figures[name] = {"shards": len(todo), "slices": rows, "wall_s": wall,
                         "slices_per_s": rows / wall if wall else 0.0, "write_share": write / busy}
        exp.mark_done(f"generate-{name}", key, **figures[name])
        if todo:
            say(f"[generate] {name}: {rows} slices in {wall:.1f} s ({figures[name]['slices_per_s']:.1f} slices/s, "
                f"{100 * figures[name]['write_share']:.1f} % of actor time writing Parquet)")
    return figures


def _run_pool(actor_cls, exp: Experiment, gen: str, rep: int, key: str, todo: list[str], cfg: ExperimentConfig,
              say) -> list[dict]:
    """Hand shards to idle actors; replace a dead actor and give its shard to the new one."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    g = cfg.generate
    n_actors = min(g.actors, len(todo))

    def make():
        return actor_cls.options(num_cpus=g.num_cpus_per_actor, num_gpus=g.num_gpus_per_actor,
                                 max_restarts=0).remote(exp.root, gen, rep, g.batch_size, cfg.ingest.sequence,
                                                        dict(cfg.debug))

    actors = [make() for _ in range(n_actors)]
    pending = list(todo)
    tries: dict[str, int] = {}
    inflight: dict = {}
    idle = list(range(n_actors))
    stats: list[dict] = []
    while pending or inflight:
        while idle and pending:
            i = idle.pop()
            shard = pending.pop(0)
            inflight[actors[i].run_shard.remote(shard, key)] = (i, shard)
        ready, _ = ray.wait(list(inflight), num_returns=1)
        i, shard = inflight.pop(ready[0])
        try:
            stats.append(ray.get(ready[0]))
            idle.append(i)
            say(f"[generate] {gen}-r{rep}: shard {shard} ({len(stats)}/{len(todo)})")
        except (RayActorError, RayTaskError) as e:
            tries[shard] = tries.get(shard, 0) + 1
            if isinstance(e, RayTaskError) and isinstance(e.cause, EssgridError):
                raise e.cause from None
            if tries[shard] > MAX_SHARD_RETRIES:
                raise EssgridError(f"generate {gen}-r{rep}: shard {shard} failed {tries[shard]} times: {e}") from e
            say(f"[generate] {gen}-r{rep}: actor lost on shard {shard} ({type(e).__name__}); redoing it")
            ray.kill(actors[i], no_restart=True)
            actors[i] = make()
            idle.append(i)
            pending.append(shard)
    for a in actors:
        ray.kill(a, no_restart=True)
    return stats
