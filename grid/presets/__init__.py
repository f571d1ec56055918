"""Presets (quick, study, paper) ship as package data beside this file; `--smoke` shrinks any of them."""

# Sizes for a run in about a minute: the whole pipeline, nothing measured.
SMOKE_OVERRIDES = [
    "data.phantom={ct_patients: 3, mr_patients: 5, seed: 0, ct_size: 128, mr_size: 64, ct_slices: [12, 14], "
    "mr_slices: [10, 12]}",
    "ingest.size=32", "ingest.n_test_mr=2", "ingest.n_val_ct=1",
    "essnet.model.ngf=8", "essnet.model.ndf=8", "essnet.model.n_blocks=2", "essnet.model.steps=6",
    "essnet.model.steps_decay=4", "essnet.model.batch_size=2",
    "grid.fractions=[0.5]", "grid.seeds=[0]", "grid.real_patients=1",
    "unet.base=8", "unet.depth=2", "unet.steps=20", "unet.eval_every=10", "unet.batch_size=4",
]
