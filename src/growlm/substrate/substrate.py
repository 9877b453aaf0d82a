"""``Substrate``: the frozen token -> vector matrix, its spec and its fingerprint.

The fingerprint hashes what defines the matrix, never its float bytes (which
may differ in the last bit between BLAS builds): the spec, the vocabulary's
content hash, the hash of the glyph source file, and the algorithm version.
Two machines building the same spec get the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from growlm.fileio import atomic_file
from growlm.substrate import binary, glyph
from growlm.substrate.vocab import Vocabulary

# bump a kind's version on any change to its matrix: old fingerprints then refuse to load
ALGORITHM_VERSION = {"glyph": "glyph-pca-2", "binary": "binary-lift-2"}
KINDS = tuple(ALGORITHM_VERSION)
# options each kind takes, with their defaults (None: derived from the vocabulary)
OPTIONS: dict[str, dict] = {"glyph": {}, "binary": {"bits": None, "lift": binary.DEFAULT_LIFT}}


def resolve_options(kind: str, options: dict) -> dict:
    """``options`` checked against ``kind``'s, with defaults filled in (so the spec names every choice)."""
    if kind not in KINDS:
        raise ValueError(f"unknown substrate kind {kind!r}; valid kinds are {list(KINDS)}")
    valid = OPTIONS[kind]
    unknown = set(options) - set(valid)
    if unknown:
        raise ValueError(f"{kind} substrate options are {sorted(valid)}, got unknown {sorted(unknown)}")
    out = {k: v for k, v in valid.items() if v is not None}
    out.update({k: v for k, v in options.items() if v is not None})
    if kind == "binary":
        if "bits" in out and (isinstance(out["bits"], bool) or not isinstance(out["bits"], int) or out["bits"] < 1):
            raise ValueError(f"binary substrate option bits must be a positive integer, got {out['bits']!r}")
        if out["lift"] not in binary.LIFTS:
            raise ValueError(f"unknown binary lift {out['lift']!r}; valid lifts are {list(binary.LIFTS)}")
    return dict(sorted(out.items()))


class SubstrateMismatchError(ValueError):
    """Two models, or a model and a checkpoint, were built on different substrates."""


@dataclass(frozen=True)
class SubstrateSpec:
    """Everything that defines a substrate matrix."""

    kind: str
    vocab: str
    d_model: int
    vocab_version: str = ""
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SubstrateSpec:
        known = {"kind", "vocab", "d_model", "vocab_version", "options"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown substrate spec keys {sorted(extra)}; valid keys are {sorted(known)}")
        return cls(**d)


def cache_dir() -> Path:
    """Where built substrates are cached (``GROWLM_CACHE`` or ``~/.cache/growlm``)."""
    return Path(os.environ.get("GROWLM_CACHE", Path.home() / ".cache" / "growlm")) / "substrates"


def compute_fingerprint(spec: SubstrateSpec, vocab: Vocabulary) -> str:
    """Stable hash of the spec, the vocabulary content, the source data and the algorithm version."""
    source = glyph.UNIFONT_SHA256 if spec.kind == "glyph" else "id-bits"
    payload = {"spec": spec.to_dict(), "vocab_sha256": vocab.sha256, "source_sha256": source,
               "algorithm": ALGORITHM_VERSION[spec.kind]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class Substrate:
    """A frozen embedding matrix with the spec and fingerprint that identify it."""

    spec: SubstrateSpec
    matrix: torch.Tensor  # [V, d_model] float32
    fingerprint: str

    @property
    def vocab_size(self) -> int:
        return self.matrix.shape[0]

    @property
    def d_model(self) -> int:
        return self.matrix.shape[1]

    @property
    def short(self) -> str:
        """First 12 hex digits of the fingerprint, for display."""
        return self.fingerprint[:12]

    @classmethod
    def build(cls, kind: str = "glyph", vocab: str = "compact", d_model: int = 256, *,
              cache: bool = True, **options) -> Substrate:
        """Build (or load from the on-disk cache) the substrate ``kind`` for ``vocab`` at ``d_model``."""
        opts = resolve_options(kind, options)
        if d_model <= 0:
            raise ValueError(f"d_model must be positive, got {d_model}")
        voc = Vocabulary.load(vocab)
        spec = SubstrateSpec(kind=kind, vocab=voc.name, d_model=int(d_model), vocab_version=voc.version, options=opts)
        return cls.from_spec(spec, cache=cache, _vocab=voc)

    @classmethod
    def from_spec(cls, spec: SubstrateSpec | dict, *, cache: bool = True, _vocab: Vocabulary | None = None,
                  ) -> Substrate:
        """Rebuild a substrate from its spec (as stored in a checkpoint)."""
        if isinstance(spec, dict):
            spec = SubstrateSpec.from_dict(spec)
        opts = resolve_options(spec.kind, spec.options)  # an unknown kind or option fails here, by name
        voc = _vocab or Vocabulary.load(spec.vocab)
        if spec.vocab_version and voc.version != spec.vocab_version:
            raise SubstrateMismatchError(
                f"substrate wants vocabulary {spec.vocab!r} version {spec.vocab_version}, "
                f"but the installed one is version {voc.version}")
        fp = compute_fingerprint(spec, voc)
        path = cache_dir() / f"{fp}.safetensors"
        if cache and path.exists():
            try:
                return cls(spec, load_file(str(path))["matrix"], fp)
            except Exception:  # a damaged cache entry is rebuilt, never trusted
                path.unlink(missing_ok=True)
        if spec.kind == "glyph":
            matrix = glyph.glyph_matrix(voc, spec.d_model)
        else:
            matrix = binary.binary_matrix(len(voc), spec.d_model, opts.get("bits"), opts["lift"])
        sub = cls(spec, matrix.contiguous(), fp)
        if cache:
            sub._write_cache(path)
        return sub

    def _write_cache(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_file(path, lambda tmp: save_file({"matrix": self.matrix}, tmp,
                                                    metadata={"spec": json.dumps(self.spec.to_dict())}))
        except OSError:
            pass  # the cache is an optimisation; a read-only home must not stop a run

    def rank(self) -> int:
        """Numerical rank of the matrix, with a tolerance suited to float32 entries."""
        rtol = max(self.matrix.shape) * torch.finfo(torch.float32).eps
        return int(torch.linalg.matrix_rank(self.matrix.double(), rtol=rtol).item())

    def info(self) -> dict:
        """Spec, fingerprint, shape, rank and a float checksum, as a JSON-ready dict."""
        t = time.perf_counter()
        r = self.rank()
        shared = self.matrix.shape[0] - torch.unique(self.matrix, dim=0).shape[0]
        return {"spec": self.spec.to_dict(), "fingerprint": self.fingerprint, "shape": list(self.matrix.shape),
                "rank": r, "rank_seconds": round(time.perf_counter() - t, 2),
                "identical_rows": shared,  # tokens drawn alike (homoglyphs such as Latin A / Cyrillic A)
                "matrix_sha256": hashlib.sha256(self.matrix.numpy().tobytes()).hexdigest()}

    def check_same(self, other_fingerprint: str, what: str = "checkpoint") -> None:
        """Raise ``SubstrateMismatchError`` naming both fingerprints if they differ."""
        if other_fingerprint != self.fingerprint:
            raise SubstrateMismatchError(
                f"substrate mismatch: this model's substrate is {self.fingerprint[:12]} "
                f"({self.spec.kind}, {self.spec.vocab}, d_model {self.spec.d_model}) but the {what} was "
                f"built on {other_fingerprint[:12]}; models can only be loaded, grown or composed on the "
                "substrate they were trained on")
