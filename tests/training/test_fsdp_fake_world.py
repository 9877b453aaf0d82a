"""FSDP2 at world sizes 8 and 64 in one process, through torch's fake process group: growlm.training.parallel's
wrapping of the paper recipes at their real shapes (meta tensors), and its whole stage cycle (wrap, step, gather
the state, unwrap, merge) at a reduced width, through a growth stage boundary and a LoRA phase.

The fake group runs every collective without data (all-gathers give zeros), so values are not checked here
(tests/training/test_parallel.py compares 2 gloo processes with one); shapes, placements, uneven shards on the
last rank, what trains, and the full state a checkpoint would hold are.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as torch_dist
from torch.distributed.tensor import DTensor, Shard
from torch.testing._internal.distributed.fake_pg import FakeStore

from growlm.model import GrowLM, lora
from growlm.training import stages
from growlm.training.loop import Loop, build_optimizer
from growlm.training.parallel import Distributed, is_sharded, shard, shutdown
from growlm.training.plan import Recipe


@pytest.fixture
def fake_world():
    """``start(world)``: a fake process group of ``world`` ranks in which this process is the last rank (the one
    whose shards are shortest, or empty, when a dimension does not divide)."""

    def start(world: int) -> int:
        torch_dist.init_process_group("fake", store=FakeStore(), rank=world - 1, world_size=world)
        return world - 1

    yield start
    shutdown()


def local_rows(rows: int, world: int, rank: int) -> int:
    """Rows of dim 0 that FSDP2 gives ``rank``: chunks of ceil(rows / world), the last ones short or empty."""
    per = math.ceil(rows / world)
    return max(0, min(per, rows - rank * per))


def check_sharded(original: torch.nn.Module, copy: torch.nn.Module, world: int, rank: int) -> None:
    """Every parameter of ``copy`` is ``original``'s, sharded on dim 0 over ``world`` ranks, training as it did."""
    assert is_sharded(copy) and all(is_sharded(b) for b in copy.blocks)
    want = dict(original.named_parameters())
    got = dict(copy.named_parameters())
    assert got.keys() == want.keys()
    for name, p in got.items():
        assert isinstance(p, DTensor) and p.placements == (Shard(0),), name
        assert p.device_mesh.size() == world and p.shape == want[name].shape, name
        assert p.to_local().shape[0] == local_rows(want[name].shape[0], world, rank), name
        assert p.requires_grad == want[name].requires_grad, name


@pytest.mark.parametrize("world", [8, 64])
def test_paper_recipes_shard_at_their_real_shapes(fake_world, world):
    """paper-v1-grow6 (d_model 4096, V 131,072): the first growth stage, the boundary to a frozen-head stage, and
    a LoRA phase (rank 32 adapters: 32 rows over 64 ranks leave the last ranks empty); paper-v3-9layer's last
    stage. On meta tensors, in bf16 as on a GPU."""
    rank = fake_world(world)
    v1 = Recipe.load("paper-v1-grow6")
    with torch.device("meta"):
        model = GrowLM(v1.config())
        for st in v1.stages[:3]:
            stages.begin_stage(model, st)
            copy = shard(model, "bf16")
            check_sharded(model, copy, world, rank)
            if st.lora:
                adapters = [n for n, p in copy.named_parameters() if ".lora_" in n]
                assert len(adapters) == 2 * 4 * 2 and all(copy.get_parameter(n).requires_grad for n in adapters)
                assert not copy.get_parameter("blocks.0.attn.qkv.weight").requires_grad
                lora.merge_all(model, safe=False)  # meta tensors hold no values to check
        v3 = Recipe.load("paper-v3-9layer")
        model = GrowLM(v3.config())
        for st in v3.stages:
            stages.begin_stage(model, st)
        check_sharded(model, shard(model, "bf16"), world, rank)


@pytest.mark.parametrize("world", [8, 64])
def test_a_growth_boundary_and_a_lora_phase_run_under_fsdp(fake_world, world):
    """paper-v1-grow6's first three stages at d_model 64: each stage is wrapped, steps once (2 micro-batches, the
    loop's own slicing of the global batch), gathers a checkpoint's full state, loads it back into the shards (a
    resume), is unwrapped into the whole model and ends (the LoRA merge)."""
    rank = fake_world(world)
    raw = Recipe.load_raw("paper-v1-grow6")
    raw["model"].update(d_model=64, n_head=4, block_size=16)
    raw["substrate"] = {"kind": "random", "vocab": "compact"}
    raw["data"] = {"path": "default"}
    raw["train"].update(batch_size=2 * world, seq_len=16, grad_accum=2)
    raw["stages"] = [{**{k: v for k, v in s.items() if k != "tokens"}, "steps": 1} for s in raw["stages"][:3]]
    recipe = Recipe.from_dict(raw)
    dist = Distributed(rank, world, torch.device("cpu"), "fsdp")
    torch.manual_seed(0)
    model = GrowLM(recipe.config())
    ids = torch.randint(0, recipe.config().vocab_size, (recipe.train.batch_size, 17))
    for st in recipe.stages:
        stages.begin_stage(model, st)
        wrapped = dist.wrap(model, "fp32")
        trainee = dist.trainee(wrapped)
        check_sharded(model, trainee, world, rank)
        opt = build_optimizer(trainee, recipe.train, dist.device)
        loss = Loop(wrapped, recipe.train, dist).step(opt, ids[:, :-1], ids[:, 1:], lr=1e-3)
        assert math.isfinite(loss)
        trains = {n for n, p in trainee.named_parameters() if p.requires_grad}
        assert len(opt.state) == len(trains) > 0  # AdamW stepped every trained shard (gradients reached them all)
        state, opt_state = dist.full_state(trainee, opt)
        full = model.state_dict()
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in full.items()}
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, s in opt_state["state"].items():
            assert s["exp_avg"].shape == s["exp_avg_sq"].shape == params[int(i)].shape
        dist.load_optimizer_state(opt, opt_state)
        for p, s in opt.state.items():  # the resumed state is sharded as its parameter
            assert isinstance(s["exp_avg"], DTensor) and s["exp_avg"].to_local().shape == p.to_local().shape
        dist.unwrap(wrapped, model)
        assert not any(isinstance(p, DTensor) for p in model.parameters())
        stages.end_stage(model, st)
    assert len(model.blocks) == 3 and not any(".lora_" in n for n, _ in model.named_parameters())
