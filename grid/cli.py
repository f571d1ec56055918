"""`essgrid`: the command line. Thin: parse, build a config, call one typed function.

User errors (`EssgridError`: a bad file, field or path) print one line naming it and exit 2; anything else is a bug
and keeps its traceback. Heavy imports (torch, ray) happen inside the command that needs them, so `essgrid --help`
and `essgrid data ...` stay quick.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from datasets.errors import EssgridError

DEFAULT_EXP = "experiments/quick"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config layered on top of the preset (optional)")
    p.add_argument("--preset", default=None, help="quick (CPU demo, default), study (longer CPU study) or paper (GPUs)")
    p.add_argument("--data", default=None, metavar="CHAOS_DIR",
                   help="a real CHAOS tree (Train_Sets, or its CT/ and MR/); default: write the phantom")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set grid.seeds=[0,1,2] (repeatable)")
    p.add_argument("--smoke", action="store_true", help="a tiny run in about a minute (sizes shrunk)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="essgrid",
        description="EssNet CT->MR synthesis and a Ray Tune grid of U-Net trainings over real/synthetic MR ratios "
                    "(Rafiq et al., arXiv 2503.00945) on CHAOS or its embedded phantom.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="write the CHAOS-layout phantom, or ingest a CHAOS tree into slice stores",
                          description="Data commands: the phantom (the embedded default data set) and ingest.")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    ph = dsub.add_parser("phantom", help="write a CHAOS-layout phantom tree (DICOM + PNG, as CHAOS writes them)",
                         description="Write a phantom CHAOS tree: OUT/CT/<id>/{DICOM_anon,Ground} and "
                                     "OUT/MR/<id>/{T1DUAL,T2SPIR}/... Unpaired bodies, deterministic by seed.")
    ph.add_argument("out", help="output folder (must not exist or be empty)")
    ph.add_argument("--ct-patients", type=int, default=20, help="CT patients (default 20, like CHAOS)")
    ph.add_argument("--mr-patients", type=int, default=20, help="MR patients (default 20, like CHAOS)")
    ph.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ph.add_argument("--ct-size", type=int, default=512, help="CT matrix size (default 512)")
    ph.add_argument("--mr-size", type=int, default=256, help="MR matrix size (default 256)")
    ing = dsub.add_parser("ingest", help="CHAOS tree -> preprocessed Parquet slice stores (real_ct, real_mr)",
                          description="Read a CHAOS tree (root with CT/ and MR/, one of them, or a patient folder), "
                                      "preprocess and write STORE/real_ct and STORE/real_mr.")
    ing.add_argument("chaos_dir", help="CHAOS tree")
    ing.add_argument("store", help="store root (local path or s3:// URI)")
    ing.add_argument("--size", type=int, default=256, help="slice size after resizing (default 256)")
    ing.add_argument("--sequence", default="T2SPIR", help="MR sequence: T2SPIR (default), T1DUAL_InPhase, T1DUAL_OutPhase")
    ing.add_argument("--n-test-mr", type=int, default=None, help="MR test patients (default ~20%%)")
    ing.add_argument("--seed", type=int, default=0, help="seed of the test-patient draw (default 0)")

    run = sub.add_parser("run", help="the whole experiment: ingest, EssNet, generation, Tune grid, analysis",
                         description="Run (or continue) an experiment in EXP. Each stage is idempotent and keyed by "
                                     "the config it depends on; rerunning on an existing EXP resumes it.")
    _add_config_args(run)
    run.add_argument("--exp", default=DEFAULT_EXP, help=f"experiment directory or URI (default {DEFAULT_EXP})")
    run.add_argument("--address", default=None, help="Ray cluster address (default: start a local cluster)")

    res = sub.add_parser("resume", help="continue an interrupted experiment with its saved config",
                         description="Finished stages are skipped, unfinished shards redone, Tune restored with "
                                     "resume_errored; finished trials never rerun.")
    res.add_argument("exp", help="experiment directory or URI")
    res.add_argument("--address", default=None, help="Ray cluster address (default: start a local cluster)")

    sb = sub.add_parser("submit", help="submit `essgrid run` to a Ray cluster as a Ray Job",
                        description="Submit the run to a Ray cluster through the Jobs API (the project as "
                                    "working_dir; data and results excluded). Use --exp s3://... on multi-node clusters.")
    _add_config_args(sb)
    sb.add_argument("--address", required=True, help="Ray Jobs address, e.g. http://HEAD:8265")
    sb.add_argument("--exp", required=True, help="experiment URI visible from every node (s3://bucket/exp)")
    sb.add_argument("--wait", action="store_true", help="follow the job's logs until it ends")

    st = sub.add_parser("status", help="stages, shards and trials of an experiment",
                        description="Stages done, shards done, trials terminated/errored/running/pending, best so far.")
    st.add_argument("exp", help="experiment directory or URI")

    an = sub.add_parser("analyze", help="results table, statistics, saturation curves and report.html",
                        description="Write tables, figures and a self-contained report for one or more experiments.")
    an.add_argument("exps", nargs="+", help="experiment directories")
    an.add_argument("--out", default=None, help="output folder (default EXP/analysis)")

    ev = sub.add_parser("evaluate", help="score predicted PNG masks against ground truth like the CHAOS evaluation",
                        description="DICE, IoU, RAVD, ASSD, MSSD of PRED_DIR vs GROUND_DIR (natural name order).")
    ev.add_argument("pred_dir")
    ev.add_argument("ground_dir")
    ev.add_argument("--dicom", default=None, help="DICOM folder of the series (for spacing in mm)")

    pr = sub.add_parser("predict", help="segment a DICOM series with a trained U-Net; write CHAOS-format PNG masks",
                        description="Segment a CT or MR series (e.g. a CHAOS test patient) and write PNG masks at "
                                    "native resolution, ready for `essgrid evaluate` or a CHAOS submission.")
    pr.add_argument("source", help="an experiment directory (best trial on validation) or a U-Net checkpoint file")
    pr.add_argument("dicom_dir", help="folder of DICOM files (one series)")
    pr.add_argument("out", help="output folder for PNG masks")
    pr.add_argument("--trial", default=None, help="trial id to use instead of the best on validation")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if getattr(args, "address", None):
        from grid.driver import use_token_auth_if_available

        use_token_auth_if_available()  # before anything imports ray
    try:
        return _dispatch(args) or 0
    except EssgridError as e:
        print(f"essgrid: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("essgrid: interrupted; `essgrid resume EXP` continues where this stopped", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int | None:
    cmd = args.command
    if cmd == "data" and args.data_command == "phantom":
        from datasets.phantom import write_phantom

        out = write_phantom(args.out, ct_patients=args.ct_patients, mr_patients=args.mr_patients, seed=args.seed,
                            ct_size=args.ct_size, mr_size=args.mr_size)
        print(f"phantom CHAOS tree written to {out}")
        return 0
    if cmd == "data" and args.data_command == "ingest":
        from datasets.ingest import ingest

        if not Path(args.chaos_dir).exists():
            raise EssgridError(f"{args.chaos_dir}: CHAOS folder does not exist")
        res = ingest(args.chaos_dir, args.store, size=args.size, sequence=args.sequence, n_test_mr=args.n_test_mr,
                     seed=args.seed)
        print(res.summary() if hasattr(res, "summary") else res)
        return 0
    if cmd in ("run", "submit"):
        from grid.config import load_config

        overrides = list(args.overrides)
        if getattr(args, "smoke", False):
            from grid.presets import SMOKE_OVERRIDES

            overrides = SMOKE_OVERRIDES + overrides
        cfg = load_config(args.config, preset=args.preset, overrides=overrides, data_dir=args.data)
        if cmd == "run":
            from grid.driver import run_experiment

            run_experiment(cfg, args.exp, address=args.address)
        else:
            from grid.submit import submit

            submit(cfg, args.exp, address=args.address, wait=args.wait)
        return 0
    if cmd == "resume":
        from grid.driver import resume_experiment

        resume_experiment(args.exp, address=args.address)
        return 0
    if cmd == "status":
        from grid.status import print_status

        print_status(args.exp)
        return 0
    if cmd == "analyze":
        from analysis.report import analyze

        result = analyze(args.exps, args.out)
        print(getattr(result, "summary", result))
        return 0
    if cmd == "evaluate":
        from models.evaluate import evaluate_folders, format_report

        print(format_report(evaluate_folders(args.pred_dir, args.ground_dir, args.dicom)))
        return 0
    if cmd == "predict":
        from grid.predict_cli import predict

        predict(args.source, args.dicom_dir, args.out, trial=args.trial)
        return 0
    raise AssertionError(f"unhandled command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
