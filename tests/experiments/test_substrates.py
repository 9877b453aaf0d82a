"""Study 1 (substrates) end to end at its quick shape."""

from __future__ import annotations

import json
import math

from growlm.experiments import run_study


def test_substrates_quick(tiny_data, tmp_path):
    summary = run_study("substrates", tmp_path / "s", seeds=1, quick=True, data=str(tiny_data), log=lambda *a: None)
    arms = {r["arm"]: r for r in summary["rows"]}
    assert set(arms) == {"glyph", "glyph16", "binary", "random (frozen)", "learned (random init)"}
    raw = json.loads((tmp_path / "s" / "seed-0.json").read_text())["rows"]
    for r in raw:
        for key in ("val_bpc_en", "val_bpc_ru", "val_bpc_zh", "heldout_bpc_en", "heldout_bpc_ru", "heldout_bpc_zh"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["arm"], key)
    rows = {r["arm"]: r for r in raw}
    # the learned embedding is a trained parameter (V x d more); its gradient is a gather, no matmul, and the
    # gradient into the first block's input is paid anyway for that block's norm: equal matmul FLOPs
    vd = 16384 * 32
    assert rows["learned (random init)"]["active_params"] - rows["glyph"]["active_params"] == vd
    assert rows["learned (random init)"]["train_flops"] == rows["glyph"]["train_flops"] > 0
    assert rows["glyph"]["train_flops"] == rows["random (frozen)"]["train_flops"]
