"""FLOP counting against torch's own counter, the cached peak, precision auto, MFU in metrics."""

from __future__ import annotations

import json

import pytest
import torch

from growlm import Config, GrowLM
from growlm.model import lora
from growlm.training import flops, plan, stages
from growlm.training.metrics import read_metrics
from growlm.training.run import grow

T, V = 32, 512


def _attention(model: GrowLM, seq: int) -> tuple[float, float]:
    """Analytic attention FLOPs per token (fwd, bwd if it trains): torch's counter skips the CPU kernel."""
    c, ctx = model.head.in_features, (seq + 1) / 2
    n_graph = len(model.blocks) - model.first_trainable_block()
    return 4 * ctx * c * len(model.blocks), 8 * ctx * c * n_graph


def _models(block: str):
    cfg = Config.from_preset("tiny", vocab_size=V, d_model=64, n_layer=3, block=block, block_size=T)
    mono = GrowLM(cfg)
    grown = GrowLM(cfg)
    grown.set_trainable([2])
    lora_only = GrowLM(cfg)
    stages.apply_stage(lora_only, plan.Stage(name="l", train_newest=0, lora=lora.LoRASpec(rank=4), steps=1))
    lora_new = GrowLM(cfg)
    stages.apply_stage(lora_new, plan.Stage(name="l", train_newest=1, lora=lora.LoRASpec(rank=4), steps=1))
    emb = GrowLM(Config.from_preset("tiny", vocab_size=V, d_model=64, n_layer=3, block=block, block_size=T,
                                    trainable_embedding=True))
    return {"mono": mono, "grow": grown, "lora": lora_only, "lora+newest": lora_new, "embedding": emb}


@pytest.mark.parametrize("block", ["paper", "llama"])
def test_counts_match_torch_flop_counter(block):
    for name, model in _models(block).items():
        mine = flops.step_flops(model, T)
        counted = flops.counted_flops(model, T, V)
        att_f, att_b = _attention(model, T)
        head = 2.0 * model.head.in_features * V
        # the chunked loss computes the head's two gradient matmuls inside its forward
        assert counted.forward + counted.backward == pytest.approx(mine.total - att_f - att_b, rel=1e-9), name
        assert counted.forward == pytest.approx(mine.forward - att_f + 2 * head, rel=1e-9), name


def test_the_setting_decides_the_count():
    m = _models("paper")
    total = {k: flops.step_flops(v, T).total for k, v in m.items()}
    fwd = flops.step_flops(m["mono"], T).forward
    assert total["mono"] == pytest.approx(3 * fwd)  # everything trains: backward = 2 x forward
    assert total["embedding"] == pytest.approx(total["mono"])  # the embedding lookup is not a matmul
    # growth: every block's forward, the backward of the newest block and the head only
    assert fwd < total["grow"] < total["lora"] < total["mono"]
    assert flops.step_flops(m["mono"], T, train=False).backward == 0


def test_peak_is_measured_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("GROWLM_CACHE", str(tmp_path))
    monkeypatch.setattr(flops, "_load_per_core", lambda: 0.1)
    calls = []
    monkeypatch.setattr(flops, "measure_matmul", lambda dtype, n=0, seconds=0: calls.append(dtype) or 1e9)
    peak = flops.cpu_peak()
    assert peak["fp32"] == 1e9 and calls
    cached = json.loads((tmp_path / "machine" / "peak.json").read_text())
    assert list(cached.values())[0]["fp32"] == 1e9
    flops._MEMO.clear()
    calls.clear()
    assert flops.cpu_peak()["fp32"] == 1e9 and not calls  # read from the cache file, not measured again


def test_a_capped_instruction_set_is_another_machine(monkeypatch, tmp_path):
    """A peak measured with the matmul library capped (e.g. ONEDNN_MAX_CPU_ISA=AVX2) is not reused uncapped."""
    monkeypatch.setenv("GROWLM_CACHE", str(tmp_path))
    monkeypatch.setattr(flops, "_load_per_core", lambda: 0.1)
    for k in flops.ISA_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(flops, "measure_matmul", lambda dtype, n=0, seconds=0: 1e9)
    flops.cpu_peak()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(flops, "measure_matmul", lambda dtype, n=0, seconds=0: 2e9)
    assert flops.cpu_peak()["fp32"] == 2e9  # measured afresh under the cap
    keys = list(json.loads((tmp_path / "machine" / "peak.json").read_text()))
    assert len(keys) == 2 and any("ONEDNN_MAX_CPU_ISA=AVX2" in k for k in keys)


def test_a_peak_measured_under_load_is_measured_again_keeping_the_best(monkeypatch, tmp_path):
    """Load only ever slows a matmul: a busy measurement is retaken by later processes and the best is kept."""
    monkeypatch.setenv("GROWLM_CACHE", str(tmp_path))
    speeds = iter([2e9, 5e9, 9e9, 3e9, 4e9])  # one fp32/bf16 value per measurement, in order

    def measure(dtype, n=0, seconds=0):
        return speed if n != flops.PROBE_N or dtype == torch.bfloat16 else speed / 2

    load = {"now": 3.0}
    monkeypatch.setattr(flops, "_load_per_core", lambda: load["now"])
    monkeypatch.setattr(flops, "measure_matmul", lambda *a, **k: measure(*a, **k))
    seen = []
    for i in range(5):
        speed = next(speeds)
        if i == 2:
            load["now"] = 0.1  # the machine is idle from the third process on
        flops._MEMO.clear()  # a new process
        seen.append(flops.cpu_peak()["fp32"])
    # busy: measured again (2 -> 5); the third, idle, measures and keeps the best (9); then the cache serves
    assert seen == [2e9, 5e9, 9e9, 9e9, 9e9]
    entry = list(json.loads((tmp_path / "machine" / "peak.json").read_text()).values())[0]
    assert entry["busy"] is False and entry["busy_measurements"] == 2


def test_an_always_busy_machine_stops_measuring_again(monkeypatch, tmp_path):
    monkeypatch.setenv("GROWLM_CACHE", str(tmp_path))
    monkeypatch.setattr(flops, "_load_per_core", lambda: 5.0)
    calls = []
    monkeypatch.setattr(flops, "measure_matmul", lambda dtype, n=0, seconds=0: calls.append(1) or 1e9)
    counts = []
    for _ in range(flops.MAX_BUSY_MEASUREMENTS + 2):
        flops._MEMO.clear()
        flops.cpu_peak()
        counts.append(len(calls))
    assert counts[flops.MAX_BUSY_MEASUREMENTS - 1] > 0
    assert counts[-1] == counts[-2] == counts[flops.MAX_BUSY_MEASUREMENTS - 1]


def test_precision_auto_follows_the_measurement(monkeypatch):
    monkeypatch.setattr(flops, "cpu_peak", lambda: {"fp32": 100e9, "bf16": 1e9})
    assert flops.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(flops, "cpu_peak", lambda: {"fp32": 100e9, "bf16": 400e9})  # an AMX machine
    assert flops.resolve_precision("auto", "cpu") == "bf16"
    assert flops.resolve_precision("fp32", "cpu") == "fp32"


def test_accelerator_table_is_dense_and_ordered():
    # more specific names come first so that "H100 SXM" is not read as a plain "H100"
    names = list(flops.ACCELERATORS)
    assert names.index("H100 SXM") < names.index("H100") and names.index("A10G") < names.index("A10")
    assert all(bf16 >= fp32 > 0 for bf16, fp32 in flops.ACCELERATORS.values())


def test_metrics_record_model_flops_and_mfu(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    grow(tiny_recipe(steps=4), run, progress=False, log=lambda *a, **k: None)
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]
    assert train and all(r["flops_per_token"] > 0 and 0 < r["mfu"] < 2 for r in train)
    assert all(r["model_flops_per_s"] == pytest.approx(r["tok_per_s"] * r["flops_per_token"], rel=1e-3)
               for r in train)
    by_stage = {r["stage"]: r["flops_per_token"] for r in train}
    assert by_stage[0] != by_stage[1]  # the LoRA phase costs differently from the growth stage


def test_counting_rejects_other_models():
    with pytest.raises(TypeError, match="counted_flops"):
        flops.step_flops(torch.nn.Linear(2, 2), T)
