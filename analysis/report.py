"""`essgrid analyze EXP...`: tables, figures and a self-contained report (report.html + report.md) of experiments.

report.html embeds every figure as a data: URI, so it can be mailed or opened anywhere; report.md beside it links
the PNG files of the same folder. For the paper preset the paper's numbers are printed beside ours.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import plots
from analysis.results import load_results, save_results
from analysis.stats import BASELINE, saturation, summarize, trial_means
from datasets import uri as U
from datasets.errors import EssgridError

log = logging.getLogger(__name__)

# Rafiq et al. (arXiv 2503.00945): real MR only (350 slices) and with EssNet synthetic MR added (1064 images)
PAPER = {"real_dice": 0.9459, "real_iou": 0.8974, "syn_dice": 0.9524, "syn_iou": 0.9091,
         "gain_dice_points": 0.65, "gain_iou_points": 1.17}


@dataclass
class AnalysisResult:
    """What `analyze` produced. `table` is the tidy results table; `results`/`report` are file paths."""

    table: pd.DataFrame
    unfinished: pd.DataFrame
    summary_table: pd.DataFrame
    saturation: pd.DataFrame
    out: str
    results: str
    report: str
    report_md: str
    figures: list[str] = field(default_factory=list)
    summary: str = ""


def _f(v: float, d: int = 4) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"


def _x_label(row: pd.Series) -> str:
    return f"{row['x']:.3g}" if row["x_kind"] == "fraction" else f"n={int(row['x'])}"


def format_summary_table(df: pd.DataFrame) -> str:
    """The summary (from `analysis.stats.summarize`) as a fixed-width terminal table.

    One line per (experiment, real budget, generator, grid point): Dice and IoU means with their 95% CIs, and the
    paired gain over real-only in points (x100) with its CI and sign-flip p.
    """
    if df is None or len(df) == 0:
        return "(no finished trials)"
    multi = df["exp"].nunique() > 1 or df["n_real_key"].nunique() > 1
    head = (f"{'exp / n_real':<18}" if multi else "") + (
        f"{'generator':<10}{'x':>7}{'trials':>7}  {'Dice':>7} {'95% CI':<17}{'IoU':>7} {'95% CI':<17}"
        f"{'gain Dice (pts)':>16} {'95% CI':<15}{'p':>6}{'gain IoU':>10}")
    lines = [head, "-" * len(head)]
    for _, r in df.iterrows():
        pre = f"{(str(r['exp']) + '/' + str(r['n_real_key']))[:17]:<18}" if multi else ""
        gain = ""
        if r["generator"] != BASELINE:
            gain = (f"{r['gain_dice'] * 100:>+16.2f} [{r['gain_dice_lo'] * 100:+.2f}, {r['gain_dice_hi'] * 100:+.2f}]"
                    f"{'':<1}{_f(r['gain_dice_p'], 3):>6}{r['gain_iou'] * 100:>+10.2f}")
        lines.append(f"{pre}{r['generator']:<10}{_x_label(r):>7}{int(r['n_trials']):>7}  {_f(r['dice_mean']):>7} "
                     f"[{_f(r['dice_lo'])}, {_f(r['dice_hi'])}] {_f(r['iou_mean']):>7} "
                     f"[{_f(r['iou_lo'])}, {_f(r['iou_hi'])}] {gain}".rstrip())
    return "\n".join(lines)


def format_saturation(sat: pd.DataFrame) -> str:
    """One line per generator curve: peak, saturation point, downturn."""
    if sat is None or len(sat) == 0:
        return "(no synthetic-data curve)"
    out = []
    for _, r in sat.iterrows():
        unit = "" if r["x_kind"] == "fraction" else " slices"
        down = f"; turns down from {r['degrades_from']:g}{unit}" if r["degrades"] else ""
        verdict = "helps" if r["helps"] else "no significant gain"
        out.append(f"{r['exp']} n_real={r['n_real_key']} {r['generator']}: peak {r['metric']} gain "
                   f"{r['peak_gain'] * 100:+.2f} pts [{r['peak_lo'] * 100:+.2f}, {r['peak_hi'] * 100:+.2f}] at "
                   f"{r['peak_x']:g}{unit} (p={_f(r['peak_p'], 3)}); saturation at {r['saturation_x']:g}{unit}"
                   f"{down} ({verdict})")
    return "\n".join(out)


def paper_comparison(summary: pd.DataFrame, sat: pd.DataFrame) -> pd.DataFrame:
    """Paper vs ours: real only, best EssNet point, gain (Dice and IoU), per experiment and real budget."""
    rows = []
    for (exp, nr), s in summary.groupby(["exp", "n_real_key"], sort=False):
        base = s[s["generator"] == BASELINE]
        ess = sat[(sat["exp"] == exp) & (sat["n_real_key"] == nr) & (sat["generator"] == "essnet")] \
            if len(sat) else sat
        best = s[(s["generator"] == "essnet") & (s["x"] == ess["peak_x"].iloc[0])] if len(ess) else s.iloc[0:0]
        ours = {"real_dice": base["dice_mean"].iloc[0] if len(base) else np.nan,
                "real_iou": base["iou_mean"].iloc[0] if len(base) else np.nan,
                "syn_dice": best["dice_mean"].iloc[0] if len(best) else np.nan,
                "syn_iou": best["iou_mean"].iloc[0] if len(best) else np.nan,
                "gain_dice_points": best["gain_dice"].iloc[0] * 100 if len(best) else np.nan,
                "gain_iou_points": best["gain_iou"].iloc[0] * 100 if len(best) else np.nan}
        for k, v in PAPER.items():
            rows.append({"exp": exp, "n_real_key": nr, "quantity": k, "paper": v, "ours": float(ours[k])})
    return pd.DataFrame(rows)


def _is_paper(table: pd.DataFrame, paper: bool | None) -> bool:
    if paper is not None:
        return paper
    return "preset" in table and (table["preset"].astype(str) == "paper").any()


def _read_csvs(folder: str) -> dict[str, pd.DataFrame]:
    out = {}
    for name in U.listdir(folder):
        if name.endswith(".csv"):
            try:
                out[name[:-4]] = pd.read_csv(io.BytesIO(U.read_bytes(U.join(folder, name))))
            except Exception as err:  # noqa: BLE001 - a torn curve file must not stop the report
                log.warning("%s: unreadable CSV, left out (%s)", U.join(folder, name), err)
    return out


def load_gallery(exp: str, n: int = 4) -> dict[str, np.ndarray | None] | None:
    """Up to `n` CT slices with liver, their EssNet and CycleGAN translations, and `n` real MR slices with liver.

    Reads `<exp>/stores/real_ct`, `real_mr` and `synthetic_mr/<generator>-r0`. Returns None (and logs why) when the
    CT store or both synthetic stores are missing: the gallery is then left out of the report.
    """
    from datasets.store import SliceStore, tensor_column_to_numpy  # pyarrow only; imported here to keep import light

    cols = ["patient_id", "slice_index", "image", "mask", "has_liver"]

    def read(name: str, where: dict | None = None):
        uri = U.join(exp, "stores", name)
        try:
            t = SliceStore(uri).read(columns=cols, has_liver=True, **(where or {}))
            return t.combine_chunks() if t.num_rows else None
        except EssgridError as err:
            log.info("gallery: %s not readable (%s)", uri, err)
            return None

    syn = {g: read(f"synthetic_mr/{g}-r0") for g in ("essnet", "cyclegan")}
    lead = syn["essnet"] if syn["essnet"] is not None else syn["cyclegan"]
    if lead is None:
        log.info("%s: no synthetic MR store; gallery left out", exp)
        return None
    pick = np.unique(np.linspace(0, lead.num_rows - 1, min(n, lead.num_rows)).round().astype(int))
    keys = [(str(lead["patient_id"][i]), int(lead["slice_index"][i].as_py())) for i in pick]

    def aligned(table) -> tuple[np.ndarray | None, np.ndarray | None]:
        if table is None:
            return None, None
        index = {(str(p), int(s)): i for i, (p, s) in enumerate(zip(table["patient_id"].to_pylist(),
                                                                      table["slice_index"].to_pylist()))}
        if not all(k in index for k in keys):
            return None, None
        rows = [index[k] for k in keys]
        return (tensor_column_to_numpy(table, "image")[rows].astype(np.float32),
                tensor_column_to_numpy(table, "mask")[rows])

    ct, ct_mask = aligned(read("real_ct", {"patient_id": sorted({k[0] for k in keys})}))
    if ct is None:
        log.info("%s: real CT slices of the synthetic ones not found; gallery left out", exp)
        return None
    mr = read("real_mr")
    real_mr = None
    if mr is not None:
        take = np.unique(np.linspace(0, mr.num_rows - 1, min(n, mr.num_rows)).round().astype(int))
        real_mr = tensor_column_to_numpy(mr, "image")[take].astype(np.float32)
    return {"ct": ct, "fake_essnet": aligned(syn["essnet"])[0], "fake_cyclegan": aligned(syn["cyclegan"])[0],
            "real_mr": real_mr, "ct_masks": ct_mask}


def _data_uri(png_path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(U.read_bytes(png_path)).decode("ascii")


def _html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-", border=0, classes="t")


def _write_reports(out: str, title: str, sections: list[tuple[str, str, list[str]]], text_blocks: dict[str, str],
                   tables: dict[str, pd.DataFrame]) -> tuple[str, str]:
    """report.html (figures as data: URIs) and report.md (figures linked by file name, same folder)."""
    css = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
           "table.t{border-collapse:collapse;font-size:12px}table.t td,table.t th{padding:2px 8px;"
           "border-bottom:1px solid #ddd;text-align:right}pre{background:#f6f6f6;padding:8px;font-size:12px}"
           "img{max-width:100%}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>"]
    md = [f"# {title}", ""]
    for name, block in text_blocks.items():
        parts.append(f"<h2>{html.escape(name)}</h2><pre>{html.escape(block)}</pre>")
        md += [f"## {name}", "", "```", block, "```", ""]
    for name, df in tables.items():
        if len(df):
            parts.append(f"<h2>{html.escape(name)}</h2>{_html_table(df)}")
            md += [f"## {name}", "", df.to_markdown(index=False) if _has_tabulate() else "```\n" +
                   df.to_string(index=False) + "\n```", ""]
    for name, caption, pngs in sections:
        parts.append(f"<h2>{html.escape(name)}</h2><p>{html.escape(caption)}</p>")
        md += [f"## {name}", "", caption, ""]
        for p in pngs:
            parts.append(f"<p><img alt='{html.escape(name)}' src='{_data_uri(p)}'></p>")
            md += [f"![{name}]({p.rsplit('/', 1)[-1]})", ""]
    parts.append("</body></html>")
    html_uri, md_uri = U.join(out, "report.html"), U.join(out, "report.md")
    U.write_text(html_uri, "\n".join(parts))
    U.write_text(md_uri, "\n".join(md))
    return html_uri, md_uri


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


def load_alignment(exps: Sequence[str]) -> pd.DataFrame:
    """Alignment scores per generator: the reference U-Net's Dice (all generators alike) and EssNet's own netS Dice.

    `<exp>/alignment.json` (written by the grid's alignment stage) and `<exp>/essnet/<run>/alignment.json`.
    """
    rows = []
    for e in exps:
        ref = U.read_json(U.join(e, "alignment.json")) if U.exists(U.join(e, "alignment.json")) else {}
        runs = set(ref) | set(U.listdir(U.join(e, "essnet")))
        for run in sorted(runs):
            own_uri = U.join(e, "essnet", run, "alignment.json")
            own = U.read_json(own_uri).get("seg_alignment_dice") if U.exists(own_uri) else None
            rows.append({"exp": e.rstrip("/").rsplit("/", 1)[-1], "synthetic set": run,
                         "reference U-Net Dice": ref.get(run), "netS Dice (held-out CT)": own})
    return pd.DataFrame(rows)


def format_alignment(align: pd.DataFrame) -> str:
    lines = [f"{'synthetic set':<18} {'reference U-Net Dice':>21} {'netS Dice (held-out CT)':>24}"]
    for r in align.itertuples(index=False):
        ref, own = r[2], r[3]
        lines.append(f"{r[1]:<18} {_f(ref) if ref is not None else 'n/a':>21} "
                     f"{_f(own) if own is not None else 'n/a (no netS)':>24}")
    return "\n".join(lines)


def analyze(exps: Sequence[str] | str, out: str | None = None, paper: bool | None = None, n_boot: int = 2000,
            seed: int = 0, gallery: bool = True) -> AnalysisResult:
    """Results table, statistics, figures and report of one or more experiments.

    Args:
        exps: experiment directories (local paths or URIs); several are compared in one report.
        out: output folder (default `<first exp>/analysis`).
        paper: print the paper's numbers beside ours (default: when the results come from the paper preset).
        n_boot, seed: of the bootstrap.
        gallery: draw the translation gallery from the first experiment's stores (skipped if they are missing).
    Returns:
        AnalysisResult; `summary` is the terminal text (summary table, saturation lines, paper comparison).
    Raises:
        ResultsError: an experiment folder that does not exist or holds no results (see `load_results`).
    """
    exps = [exps] if isinstance(exps, str) else list(exps)
    table, unfinished = load_results(exps)
    out = out or U.join(exps[0], "analysis")
    U.makedirs(out)
    results_uri, _ = save_results(table, out)
    summary = summarize(table, n_boot=n_boot, seed=seed) if len(table) else pd.DataFrame()
    sat = pd.concat([saturation(summary, m) for m in ("dice", "iou")], ignore_index=True) if len(summary) \
        else pd.DataFrame()
    sat_dice = sat[sat["metric"] == "dice"] if len(sat) else sat
    if len(summary):
        buf = io.BytesIO()
        summary.to_csv(buf, index=False)
        U.write_bytes(U.join(out, "summary.csv"), buf.getvalue())
    if len(sat):
        U.write_text(U.join(out, "saturation.csv"), sat.to_csv(index=False))
    if len(unfinished):
        U.write_text(U.join(out, "unfinished_trials.csv"), unfinished.to_csv(index=False))

    sections: list[tuple[str, str, list[str]]] = []
    figures: list[str] = []
    if len(summary):
        points = trial_means(table)
        kind = summary["x_kind"].iloc[0]
        f1 = plots.plot_saturation(summary, points, U.join(out, "saturation"), x="fraction", sat=sat_dice)
        sections.append(("Saturation curve", "Test Dice and IoU (3D, per volume) against the synthetic fraction: "
                         "mean over test volumes and seeds, 95% cluster-bootstrap CI (patients x seeds), thin points "
                         "= one trial each, star = saturation point, black = real only.", f1[:1]))
        figures += f1
        if kind == "fraction":
            f2 = plots.plot_saturation(summary, points, U.join(out, "saturation_nsyn"), x="n_syn", sat=sat_dice)
            sections.append(("Saturation curve by synthetic count", "The same points against the number of "
                             "synthetic slices in the mix.", f2[:1]))
            figures += f2
    losses, curves, gens = {}, {}, {}
    for e in exps:
        for run in U.listdir(U.join(e, "essnet")):
            p = U.join(e, "essnet", run, "losses.csv")
            if U.exists(p):
                losses[run if len(exps) == 1 else f"{run} ({e.rstrip('/').rsplit('/', 1)[-1]})"] = \
                    pd.read_csv(io.BytesIO(U.read_bytes(p)))
        curves.update(_read_csvs(U.join(e, "curves")))
    if len(table):
        gens = dict(zip(table["trial_id"], table["generator"]))
    if losses:
        f = plots.plot_essnet_losses(losses, U.join(out, "essnet_losses"))
        sections.append(("EssNet / CycleGAN training losses", "Loss terms against step (running mean).", f[:1]))
        figures += f
    if curves:
        f = plots.plot_unet_curves(curves, gens, U.join(out, "unet_val_dice"))
        sections.append(("U-Net validation Dice", "Validation Dice of every trial during training.", f[:1]))
        figures += f
    if gallery:
        g = load_gallery(exps[0])
        if g is not None:
            f = plots.plot_gallery(g["ct"], g["fake_essnet"], g["fake_cyclegan"], g["real_mr"], g["ct_masks"],
                                   U.join(out, "gallery"))
            sections.append(("Translation gallery", "CT slices, their synthetic MR by EssNet and by CycleGAN, and "
                             "unpaired real MR; green = the CT liver mask's contour.", f[:1]))
            figures += f

    text = {"Summary": format_summary_table(summary), "Saturation": format_saturation(sat)}
    tables: dict[str, pd.DataFrame] = {}
    if _is_paper(table, paper) and len(summary):
        comp = paper_comparison(summary, sat_dice)
        tables["Paper (Rafiq et al.) vs ours"] = comp
        text["Paper vs ours"] = "\n".join(
            f"{r.exp} n_real={r.n_real_key} {r.quantity:<17} paper {r.paper:>7.4f}   ours {_f(r.ours)}"
            for r in comp.itertuples())
    align = load_alignment(exps)
    if len(align):
        tables["Alignment: does the synthetic MR keep the liver where the CT mask says?"] = align
        text["Alignment"] = format_alignment(align)
    if len(unfinished):
        keep = [c for c in ("exp", "trial_id", "status", "error") if c in unfinished]
        tables["Trials without results (errored or unfinished)"] = unfinished[keep]
        text["Unfinished"] = f"{len(unfinished)} trial(s) without results: " + ", ".join(
            f"{k} {v}" for k, v in unfinished["status"].value_counts().items())
    title = "essgrid analysis: " + ", ".join(e.rstrip("/").rsplit("/", 1)[-1] for e in exps)
    html_uri, md_uri = _write_reports(out, title, sections, text, tables)
    summary_text = "\n\n".join(text.values())
    return AnalysisResult(table=table, unfinished=unfinished, summary_table=summary, saturation=sat, out=out,
                          results=results_uri, report=html_uri, report_md=md_uri, figures=figures,
                          summary=summary_text)
