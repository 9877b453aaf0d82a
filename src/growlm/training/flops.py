"""Model FLOPs of a training step, the hardware's peak, and MFU.

``step_flops`` counts the matrix multiplications one token costs in the model's
*current* setting, read from the model itself: the forward of every block and of
the head; the backward only where autograd runs it (a trainable weight needs its
weight gradient, an input that requires grad needs its input gradient), so a
growth stage's frozen no-grad prefix costs its forward only and a LoRA phase
costs the base weights' input gradients plus the adapters' own matmuls.
Attention counts QK^T and AV over the causal context, (T + 1) / 2 keys per query
on average. Norms, activations and the optimiser are not counted (standard MFU).

``peak_flops`` is the denominator: on CPU it is measured once per machine (a
square fp32 matmul on torch's threads, and bf16 next to it, repeats interleaved,
best of each), cached in the user cache directory; a measurement taken while the
machine was loaded is taken again by the next few processes, keeping the best.
On CUDA it comes from a table of known accelerators (dense, no sparsity), or is
measured for an unknown one.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from growlm.util.fileio import atomic_write_text

# Dense peak TFLOP/s by accelerator name fragment: (bf16, fp32). fp32 is the plain (non-TF32) rate.
ACCELERATORS: dict[str, tuple[float, float]] = {
    "H200": (989.0, 67.0),
    "H100 SXM": (989.0, 67.0),
    "H100 NVL": (835.0, 60.0),
    "H100 PCIe": (756.0, 51.0),
    "H100": (756.0, 51.0),  # unknown form factor: the lower (PCIe) figure
    "A100": (312.0, 19.5),
    "L40S": (362.0, 91.6),
    "L4": (121.0, 30.3),
    "A10G": (70.0, 31.2),
    "A10": (125.0, 31.2),
    "RTX 4090": (165.2, 82.6),
    "RTX 3090": (71.0, 35.6),
}

MEASURE_N = 2048  # matmul side for the CPU peak
PROBE_N = 512  # matmul side of the quick bf16-vs-fp32 probe


# --------------------------------------------------------------------------- counting


@dataclass
class StepFlops:
    """FLOPs per token of one training step, split into forward and backward."""

    forward: float
    backward: float

    @property
    def total(self) -> float:
        return self.forward + self.backward


def _trains(m: nn.Module) -> bool:
    return any(p.requires_grad for p in m.parameters(recurse=False))


def _linear(lin: nn.Linear, x_grad: bool) -> tuple[float, float, bool]:
    """(forward, backward, output requires grad) per token of one linear, LoRA adapter included."""
    n_in, n_out = lin.in_features, lin.out_features
    fwd = 2.0 * n_in * n_out
    w_train = lin.weight.requires_grad
    bwd = 2.0 * n_in * n_out * (int(w_train) + int(x_grad))  # weight gradient, input gradient
    out_grad = x_grad or w_train or (lin.bias is not None and lin.bias.requires_grad)
    lora_a = getattr(lin, "lora_A", None)
    if lora_a is not None:
        r = lora_a.shape[0]
        fwd += 2.0 * r * (n_in + n_out)
        if lora_a.requires_grad or lin.lora_B.requires_grad:
            # grad B and grad of x A^T (2 r n_out each), grad A (2 r n_in), grad x through A when needed
            bwd += 4.0 * r * n_out + 2.0 * r * n_in * (1 + int(x_grad))
            out_grad = True
        elif x_grad:
            bwd += 2.0 * r * (n_in + n_out)
    return fwd, bwd, out_grad


def _block(block: nn.Module, seq_len: int, x_grad: bool) -> tuple[float, float, bool]:
    """(forward, backward, output requires grad) per token of one Block given its input's grad state."""
    fwd = bwd = 0.0
    attn, mlp = block.attn, block.mlp
    f, b, q_grad = _linear(attn.qkv, x_grad or _trains(block.norm1))
    fwd, bwd = fwd + f, bwd + b
    ctx = (seq_len + 1) / 2  # causal: keys per query on average
    fwd += 4.0 * ctx * attn.qkv.in_features
    bwd += 8.0 * ctx * attn.qkv.in_features if q_grad else 0.0
    f, b, o = _linear(attn.proj, q_grad)
    fwd, bwd, x_grad = fwd + f, bwd + b, x_grad or o
    n2 = x_grad or _trains(block.norm2)
    if hasattr(mlp, "fc"):
        f, b, h_grad = _linear(mlp.fc, n2)
        fwd, bwd = fwd + f, bwd + b
    else:  # SwiGLU
        f1, b1, g1 = _linear(mlp.gate, n2)
        f2, b2, g2 = _linear(mlp.up, n2)
        fwd, bwd, h_grad = fwd + f1 + f2, bwd + b1 + b2, g1 or g2
    f, b, o = _linear(mlp.proj, h_grad)
    return fwd + f, bwd + b, x_grad or o


def step_flops(model: nn.Module, seq_len: int, train: bool = True) -> StepFlops:
    """FLOPs per token of a training step (``train=False``: of a forward pass) of a ``GrowLM`` as it stands."""
    if not hasattr(model, "blocks") or not hasattr(model, "head"):
        raise TypeError(f"step_flops counts GrowLM-style models (blocks + head), not {type(model).__name__}; "
                        "use counted_flops for other models")
    if not train:
        with torch.no_grad():
            return _count(model, seq_len, grad=False)
    return _count(model, seq_len, grad=True)


def _count(model: nn.Module, seq_len: int, grad: bool) -> StepFlops:
    emb = model.embedding
    x_grad = grad and isinstance(emb, nn.Parameter) and emb.requires_grad
    split = model.first_trainable_block() if grad and not x_grad else (0 if grad else len(model.blocks))
    fwd = bwd = 0.0
    for i, block in enumerate(model.blocks):
        f, b, o = _block(block, seq_len, x_grad)
        fwd += f
        if grad and i >= split:
            bwd, x_grad = bwd + b, o
    head = model.head
    fwd += 2.0 * head.in_features * head.out_features
    if grad:
        h_grad = x_grad or _trains(model.norm)
        bwd += 2.0 * head.in_features * head.out_features * (int(h_grad) + int(head.weight.requires_grad))
    return StepFlops(fwd, bwd)


def counted_flops(model: nn.Module, seq_len: int, vocab: int, device: torch.device | str = "cpu") -> StepFlops:
    """FLOPs per token of a training step of any model, counted by running one sequence under
    ``torch.utils.flop_counter`` (matmuls as dispatched; CPU attention kernels are not counted by it).

    Gradients the counting step makes are removed again, so it can run before a stage.
    """
    def addmm_(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    mapping = {torch.ops.aten.addmm_: addmm_}  # the chunked loss accumulates the head's gradient in place
    idx = torch.randint(0, vocab, (1, seq_len + 1), generator=torch.Generator().manual_seed(0)).to(device)
    had = {p: p.grad for p in model.parameters() if p.requires_grad}
    with FlopCounterMode(display=False, custom_mapping=mapping) as fwd_counter:
        loss = model(idx[:, :-1], idx[:, 1:])
    with FlopCounterMode(display=False, custom_mapping=mapping) as bwd_counter:
        if loss.requires_grad:
            loss.backward()
    for p, g in had.items():
        p.grad = g
    return StepFlops(fwd_counter.get_total_flops() / seq_len, bwd_counter.get_total_flops() / seq_len)


# --------------------------------------------------------------------------- peak


ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def _cache_file() -> Path:
    root = Path(os.environ.get("GROWLM_CACHE", Path.home() / ".cache" / "growlm"))
    return root / "machine" / "peak.json"


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``; the platform's own name where that file is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_key() -> str:
    name = cpu_model()
    # what the kernels may use: torch's vector ISA, and the matmul libraries' caps when the user set them
    isa = [torch.backends.cpu.get_cpu_capability()]
    isa += [f"{k}={os.environ[k]}" for k in ISA_ENV if os.environ.get(k)]
    return f"{name}|threads={torch.get_num_threads()}|torch={torch.__version__}|isa={','.join(isa)}"


def measure_matmul(dtype: torch.dtype, n: int = MEASURE_N, seconds: float = 0.5, device: str = "cpu") -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype`` over about ``seconds`` of repeats."""
    g = torch.Generator().manual_seed(0)  # never the global generator: a run's random stream must not depend on it
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    torch.mm(a, b, out=out)  # warm-up (thread pool, packing buffers)
    sync()
    best, start = float("inf"), time.perf_counter()
    reps = 0
    while reps < 5 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        best = min(best, time.perf_counter() - t)
        reps += 1
    return 2.0 * n**3 / best


_MEMO: dict[str, dict] = {}
BUSY_LOAD = 0.75  # load average per core above which a peak measurement may read low
MAX_BUSY_MEASUREMENTS = 3  # on a machine that is always busy, stop measuring again after this many


def cpu_peak(refresh: bool = False) -> dict:
    """This CPU's measured matmul peak in fp32 and bf16 (FLOP/s), measured once and cached."""
    path, key = _cache_file(), _cpu_key()
    if not refresh and (str(path), key) in _MEMO:
        return _MEMO[str(path), key]
    cached = {}
    if path.exists():
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}  # unreadable cache: measure again
    if not refresh and key in cached and not _remeasure(cached[key]):
        _MEMO[str(path), key] = cached[key]
        return cached[key]
    load = _load_per_core()
    entry = _measure_peaks()
    old = cached.get(key) if not refresh else None
    if old:  # noise only ever lowers a best time: the peak is the best of every measurement
        entry = {**entry, "fp32": max(entry["fp32"], old["fp32"]), "bf16": max(entry["bf16"], old["bf16"])}
    entry["busy_measurements"] = (old or {}).get("busy_measurements", 0) + (load > BUSY_LOAD)
    entry["busy"] = load > BUSY_LOAD
    cached[key] = _MEMO[str(path), key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cached, indent=1))
    except OSError:
        pass  # a read-only home: the measurement still serves this process
    return entry


def _load_per_core() -> float:
    """The 1-minute load average per usable core (0 where the OS does not say)."""
    try:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return os.getloadavg()[0] / cores
    except OSError:
        return 0.0


def _remeasure(entry: dict) -> bool:
    """A peak measured while other work loaded the machine is measured again by later processes (a few times)."""
    return bool(entry.get("busy")) and entry.get("busy_measurements", 0) < MAX_BUSY_MEASUREMENTS


def _measure_peaks() -> dict:
    """fp32 and bf16 matmul peaks, their repeats interleaved so that passing load hits both alike."""
    # bf16 is probed small first: without AMX it can be ~100x slower than fp32, and a 2048^3 probe takes minutes
    fp32, bf16 = 0.0, measure_matmul(torch.bfloat16, PROBE_N, seconds=0.2)
    big_bf16 = bf16 > measure_matmul(torch.float32, PROBE_N, seconds=0.2)
    for _ in range(3):
        fp32 = max(fp32, measure_matmul(torch.float32, seconds=0.35))
        if big_bf16:
            bf16 = max(bf16, measure_matmul(torch.bfloat16, seconds=0.35))
    return {"fp32": fp32, "bf16": bf16, "n": MEASURE_N, "threads": torch.get_num_threads(), "source": "measured"}


def gpu_peak(device: torch.device) -> dict:
    """A CUDA device's dense peak from the table of known accelerators, else measured."""
    name = torch.cuda.get_device_name(device)
    for frag, (bf16, fp32) in ACCELERATORS.items():
        if frag.lower() in name.lower():
            return {"fp32": fp32 * 1e12, "bf16": bf16 * 1e12, "name": name, "source": "table"}
    with torch.cuda.device(device):
        return {"fp32": measure_matmul(torch.float32, 8192, device=str(device)),
                "bf16": measure_matmul(torch.bfloat16, 8192, device=str(device)), "name": name,
                "source": "measured"}


def peak_flops(device: torch.device | str = "cpu", precision: str = "fp32") -> float:
    """Peak matmul FLOP/s of ``device`` in ``precision`` ("fp32" or "bf16")."""
    device = torch.device(device)
    peaks = gpu_peak(device) if device.type == "cuda" else cpu_peak()
    return float(peaks[precision])


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` becomes bf16 where bf16 matmul is measurably faster than fp32 (AMX CPUs, CUDA with bf16), else fp32."""
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type != "cpu":
        return "fp32"
    peaks = cpu_peak()
    return "bf16" if peaks["bf16"] > 1.2 * peaks["fp32"] else "fp32"  # margin: timing noise must not flip it


def mfu(flops_per_s: float, peak: float) -> float:
    """Model FLOP utilisation: achieved model FLOP/s over the peak."""
    return flops_per_s / peak if peak > 0 else 0.0
