"""analysis/report.py: analyze() writes tables, figures and a self-contained report.html."""
import subprocess
import sys
from html.parser import HTMLParser

import pandas as pd

from analysis.report import PAPER, analyze, format_summary_table
from analysis.stats import summarize
from known_results import build_results, write_experiment


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.refs, self.svgs = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "svg":
            self.svgs += 1
        for key in ("src", "href", "data"):
            if key in a and tag != "img":
                self.refs.append(a[key])


def test_report_is_self_contained(tmp_path):
    failed = {"generator": "essnet", "replicate": 0, "fraction": 0.9, "n_syn_abs": -1, "n_real": 40, "seed": 0,
              "fold": 0, "trial_id": "essnet-r0_f0.900_nr40_s0_k0", "status": "ERROR", "error": "boom"}
    exp = write_experiment(tmp_path / "exp", build_results(seeds=[0, 1, 2]), [failed])
    res = analyze([exp], n_boot=100)
    out = tmp_path / "exp" / "analysis"
    assert res.out == str(out) and res.report == str(out / "report.html")
    for name in ("results.parquet", "results.csv", "summary.csv", "saturation.csv", "report.md",
                 "saturation.png", "saturation.svg", "saturation_nsyn.png", "essnet_losses.png",
                 "unet_val_dice.png", "unfinished_trials.csv"):
        assert (out / name).is_file(), name
    p = _Refs()
    p.feed((out / "report.html").read_text())
    assert len(p.imgs) == 4 and all(s.startswith("data:image/png;base64,") for s in p.imgs)
    assert p.refs == []  # no link to a local file
    assert "boom" in (out / "report.html").read_text() and "ERROR" in res.summary
    assert len(res.unfinished) == 1 and len(res.table) == 3 * 4 * 9
    assert "paper" not in res.summary.lower()


def test_paper_numbers_beside_ours_and_two_experiments_compared(tmp_path):
    a = write_experiment(tmp_path / "a", build_results(seeds=[0, 1], preset="paper"))
    b = write_experiment(tmp_path / "b", build_results(seeds=[2, 3]))
    res = analyze([a, b], str(tmp_path / "cmp"), n_boot=100)
    assert set(res.summary_table["exp"]) == {"a", "b"}
    assert "0.9459" in res.summary and "0.9091" in res.summary
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "Paper (Rafiq et al.) vs ours" in html and str(PAPER["gain_iou_points"]) in html
    assert not (tmp_path / "a" / "analysis").exists()  # --out wins


def test_summary_table_reads_in_a_terminal():
    text = format_summary_table(summarize(build_results(seeds=[0, 1]), n_boot=100))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["generator", "x", "trials"]
    assert len(lines) == 2 + 9 and any(ln.startswith("essnet") and "+4.90" in ln for ln in lines)
    assert format_summary_table(pd.DataFrame()) == "(no finished trials)"


def test_analysis_imports_neither_torch_nor_ray():
    code = "import sys, analysis.report; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def _store(root, kind, image, mask, patient, origin="real", generator="none"):
    import numpy as np
    from datasets.store import SliceStore, slices_to_table
    st = SliceStore(str(root), kind=kind, create=True, config={"k": kind})
    n = image.shape[0]
    st.write_shard(patient, slices_to_table(
        image, mask, patient_id=patient, modality="MR" if kind != "real_ct" else "CT",
        sequence="CT" if kind == "real_ct" else "T2SPIR", split="train", spacing=(1.0, 1.0, 2.0),
        native_shape=(16, 16), config_hash=st.config_hash, origin=origin, generator=generator,
        slice_index=list(range(n)), quality=np.nan if origin == "synthetic" else None))


def test_gallery_from_the_experiment_stores(tmp_path):
    import numpy as np
    from analysis.report import load_gallery
    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (5, 16, 16)).astype(np.float32)
    mask = np.zeros((5, 16, 16), np.uint8)
    mask[1:4, 4:10, 4:10] = 1
    exp = write_experiment(tmp_path / "exp", build_results(seeds=[0, 1]))
    assert load_gallery(exp) is None  # no stores: skipped, not an error
    _store(tmp_path / "exp/stores/real_ct", "real_ct", img, mask, "ct1")
    _store(tmp_path / "exp/stores/synthetic_mr/essnet-r0", "synthetic_mr", -img, mask, "ct1", "synthetic", "essnet")
    _store(tmp_path / "exp/stores/real_mr", "real_mr", img[:, ::-1].copy(), mask, "mr1")
    g = load_gallery(exp)
    assert g["ct"].shape == (3, 16, 16) and g["fake_cyclegan"] is None
    np.testing.assert_allclose(g["fake_essnet"], -g["ct"], atol=1e-3)  # the same CT slices, paired by index
    assert g["ct_masks"].all(axis=(1, 2)).sum() == 0 and g["ct_masks"].any(axis=(1, 2)).all()
    res = analyze([exp], n_boot=50)
    assert (tmp_path / "exp" / "analysis" / "gallery.png").is_file() and "Translation gallery" in open(res.report).read()
