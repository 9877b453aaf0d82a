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
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from growlm.substrate import binary, glyph, glyph16, random, unifont
from growlm.substrate.vocab import Vocabulary
from growlm.util.fileio import atomic_file

# bump a kind's version on any change to its matrix: old fingerprints then refuse to load
ALGORITHM_VERSION = {"glyph": glyph.ALGORITHM, "glyph16": "glyph-pca-2", "binary": "binary-lift-2",
                     "random": random.ALGORITHM}
KINDS = tuple(ALGORITHM_VERSION)
# what a recipe builds when its [substrate] table leaves a key out
DEFAULT_KIND, DEFAULT_VOCAB = "glyph", "compact"
# options each kind takes, with their defaults (None: derived from the vocabulary or d_model)
OPTIONS: dict[str, dict] = {"glyph": {"cell": None}, "glyph16": {},
                            "binary": {"bits": None, "lift": binary.DEFAULT_LIFT}, "random": {"seed": 0}}
# what the matrix is made from, besides the spec and the vocabulary
SOURCE = {"glyph": unifont.UNIFONT_SHA256, "glyph16": unifont.UNIFONT_SHA256, "binary": "id-bits",
          "random": "numpy-RandomState-standard_normal"}


def _positive_int(kind: str, key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 1):
        raise ValueError(f"{kind} substrate option {key} must be a {'non-negative' if key == 'seed' else 'positive'}"
                         f" integer, got {value!r}")


def resolve_options(kind: str, options: dict, d_model: int | None = None) -> dict:
    """``options`` checked against ``kind``'s, with defaults filled in (so the spec names every choice)."""
    if kind not in KINDS:
        raise ValueError(f"unknown substrate kind {kind!r}; valid kinds are {list(KINDS)}")
    valid = OPTIONS[kind]
    unknown = set(options) - set(valid)
    if unknown:
        raise ValueError(f"{kind} substrate options are {sorted(valid)}, got unknown {sorted(unknown)}")
    out = {k: v for k, v in valid.items() if v is not None}
    out.update({k: v for k, v in options.items() if v is not None})
    if kind == "glyph" and "cell" not in out and d_model is not None:
        out["cell"] = glyph.default_cell(d_model)
    for key in ("bits", "seed", "cell"):
        if key in out:
            _positive_int(kind, key, out[key])
    if kind == "binary" and out["lift"] not in binary.LIFTS:
        raise ValueError(f"unknown binary lift {out['lift']!r}; valid lifts are {list(binary.LIFTS)}")
    if kind == "glyph" and out.get("cell") not in (None, *glyph.CELLS):
        raise ValueError(f"glyph substrate option cell must be one of {list(glyph.CELLS)}, got {out['cell']!r}")
    return dict(sorted(out.items()))


def build_matrix(spec: SubstrateSpec, vocab: Vocabulary) -> tuple[torch.Tensor, str, torch.Tensor | None]:
    """The matrix of ``spec``, the golden hash of what it is computed from (its exact pre-image) and,
    for the PCA kinds, the variance of every principal component of that source (descending)."""
    opts = resolve_options(spec.kind, spec.options, spec.d_model)
    if spec.kind == "glyph":
        m, golden, evals = glyph.glyph_matrix(vocab, spec.d_model, opts["cell"])
        return m, golden, torch.from_numpy(evals)
    if spec.kind == "glyph16":
        images = glyph16.token_images(vocab)
        m = torch.from_numpy(glyph16.pca_embed(images, spec.d_model).astype("float32"))
        x = torch.from_numpy(images - images.mean(axis=0, keepdims=True))
        evals = torch.linalg.eigvalsh(x.T @ x / x.shape[0]).flip(0).clamp(min=0)
        return m, hashlib.sha256(images.tobytes()).hexdigest(), evals
    if spec.kind == "random":
        return (*random.random_matrix(len(vocab), spec.d_model, opts["seed"]), None)
    m = binary.binary_matrix(len(vocab), spec.d_model, opts.get("bits"), opts["lift"])
    return m, hashlib.sha256(m.numpy().tobytes()).hexdigest(), None  # exact arithmetic: the matrix is its pre-image


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


@dataclass(frozen=True)
class SubstratePlan:
    """A recipe's ``[substrate]`` table: kind, vocabulary and the kind's options; ``d_model`` comes from the model.

    ``build(d_model)`` makes the ``Substrate`` (whose ``SubstrateSpec`` fills in every default). ``to_dict`` is the
    table as the recipe wrote it, so a plan's fingerprint does not change with the typing.
    """

    kind: str = DEFAULT_KIND
    vocab: str = DEFAULT_VOCAB
    options: dict = field(default_factory=dict)  # as the recipe gives them; their defaults are filled at build
    left_out: frozenset[str] = field(default=frozenset(), compare=False, repr=False)  # kind/vocab the table omitted

    def __post_init__(self) -> None:
        for key in ("kind", "vocab"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"[substrate] {key} must be a string, got {getattr(self, key)!r}")
        try:
            resolve_options(self.kind, self.options)
        except ValueError as e:
            raise ValueError(f"[substrate] {e}") from None

    @classmethod
    def from_dict(cls, d: dict) -> SubstratePlan:
        """The plan of a ``[substrate]`` table (``kind``, ``vocab`` and the kind's options, all optional)."""
        if not isinstance(d, dict):
            raise ValueError(f"[substrate] must be a table, got {d!r}")
        given = {k: d[k] for k in ("kind", "vocab") if k in d}
        return cls(**given, options={k: v for k, v in d.items() if k not in ("kind", "vocab")},
                   left_out=frozenset({"kind", "vocab"} - set(given)))

    def to_dict(self) -> dict:
        """The ``[substrate]`` table: kind, vocab (unless the recipe left it out at its default) and options."""
        defaults = {"kind": DEFAULT_KIND, "vocab": DEFAULT_VOCAB}
        named = {k: getattr(self, k) for k in ("kind", "vocab")
                 if k not in self.left_out or getattr(self, k) != defaults[k]}
        return {**named, **self.options}

    def build(self, d_model: int, *, cache: bool = True) -> Substrate:
        """The substrate this plan names at ``d_model`` (built, or read from the on-disk cache)."""
        return Substrate.build(self.kind, self.vocab, d_model, cache=cache, **self.options)


def cache_dir() -> Path:
    """Where built substrates are cached (``GROWLM_CACHE`` or ``~/.cache/growlm``)."""
    return Path(os.environ.get("GROWLM_CACHE", Path.home() / ".cache" / "growlm")) / "substrates"


def compute_fingerprint(spec: SubstrateSpec, vocab: Vocabulary) -> str:
    """Stable hash of the spec, the vocabulary content, the source data and the algorithm version."""
    payload = {"spec": spec.to_dict(), "vocab_sha256": vocab.sha256, "source_sha256": SOURCE[spec.kind],
               "algorithm": ALGORITHM_VERSION[spec.kind]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class Substrate:
    """A frozen embedding matrix with the spec and fingerprint that identify it.

    ``content_sha256`` is the golden hash of the matrix's exact pre-image (the bitmap stack of a
    glyph substrate, the draws of a random one, the matrix itself for binary). Checkpoints record it
    next to the fingerprint, and loading compares both: the same fingerprint must mean the same matrix.
    """

    spec: SubstrateSpec
    matrix: torch.Tensor  # [V, d_model] float32
    fingerprint: str
    content_sha256: str = ""
    source_spectrum: torch.Tensor | None = None  # PCA kinds: variance of each component of the source images

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
    def build(cls, kind: str = DEFAULT_KIND, vocab: str = DEFAULT_VOCAB, d_model: int = 256, *,
              cache: bool = True, **options) -> Substrate:
        """Build (or load from the on-disk cache) the substrate ``kind`` for ``vocab`` at ``d_model``."""
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive integer, got {d_model!r}")
        opts = resolve_options(kind, options, d_model)
        voc = Vocabulary.load(vocab)
        spec = SubstrateSpec(kind=kind, vocab=voc.name, d_model=int(d_model), vocab_version=voc.version, options=opts)
        return cls.from_spec(spec, cache=cache, _vocab=voc)

    @classmethod
    def from_spec(cls, spec: SubstrateSpec | dict, *, cache: bool = True, _vocab: Vocabulary | None = None,
                  ) -> Substrate:
        """Rebuild a substrate from its spec (as stored in a checkpoint)."""
        if isinstance(spec, dict):
            spec = SubstrateSpec.from_dict(spec)
        resolve_options(spec.kind, spec.options, spec.d_model)  # an unknown kind or option fails here, by name
        voc = _vocab or Vocabulary.load(spec.vocab)
        if spec.vocab_version and voc.version != spec.vocab_version:
            raise SubstrateMismatchError(
                f"substrate wants vocabulary {spec.vocab!r} version {spec.vocab_version}, "
                f"but the installed one is version {voc.version}")
        fp = compute_fingerprint(spec, voc)
        path = cache_dir() / f"{fp}.safetensors"
        if cache and path.exists():
            try:
                with safe_open(str(path), "pt") as f:
                    content = (f.metadata() or {})["content_sha256"]
                    spectrum = f.get_tensor("source_spectrum") if "source_spectrum" in f.keys() else None
                    return cls(spec, f.get_tensor("matrix"), fp, content, spectrum)
            except Exception:  # a damaged (or pre-golden-hash) cache entry is rebuilt, never trusted
                path.unlink(missing_ok=True)
        matrix, content, spectrum = build_matrix(spec, voc)
        sub = cls(spec, matrix.contiguous(), fp, content, spectrum)
        if cache:
            sub._write_cache(path)
        return sub

    def _write_cache(self, path: Path) -> None:
        meta = {"spec": json.dumps(self.spec.to_dict()), "content_sha256": self.content_sha256}
        tensors = {"matrix": self.matrix}
        if self.source_spectrum is not None:
            tensors["source_spectrum"] = self.source_spectrum.contiguous()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_file(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        except OSError:
            pass  # the cache is an optimisation; a read-only home must not stop a run

    def _spectrum(self, centred: bool) -> torch.Tensor:
        """Eigenvalues, descending, of the matrix's d x d Gram (or covariance) matrix, in float64."""
        m = self.matrix.double()
        if centred:
            m = m - m.mean(dim=0, keepdim=True)
        small = m @ m.T if m.shape[0] < m.shape[1] else m.T @ m
        return torch.linalg.eigvalsh(small).flip(0).clamp(min=0)

    def rank(self) -> int:
        """Numerical rank of the matrix, with a tolerance suited to float32 entries.

        Singular values above ``max(V, d) * eps32`` times the largest count, as ``matrix_rank``
        would with that ``rtol``, taken from the d x d Gram matrix (seconds, not minutes, at V = 65536).
        """
        rtol = max(self.matrix.shape) * torch.finfo(torch.float32).eps
        sv = self._spectrum(centred=False).sqrt()
        return int((sv > sv[0] * rtol).sum().item()) if sv.numel() and sv[0] > 0 else 0

    def explained_variance(self, ks=(256, 512)) -> dict[str, float]:
        """Share of the variance in the top k principal components, for each k below d_model and d_model.

        For the PCA kinds (glyph, glyph16) the variance is the source images' (what the d_model kept
        components capture of the pixels); for the others, the matrix's own (column-centred).
        """
        ev = self.source_spectrum if self.source_spectrum is not None else self._spectrum(centred=True)
        ev = ev.double().clamp(min=0)
        total = float(ev.sum()) or 1.0
        ks = sorted({k for k in ks if k < self.d_model} | {self.d_model})
        return {str(k): round(float(ev[:k].sum()) / total, 4) for k in ks}

    def distinct_after_norm(self, norm: str = "layer_norm", decimals: float = 1e-4) -> int:
        """Distinct rows after the model's first norm (no affine; rounded to ``decimals``).

        ``layer_norm`` is what the ``paper`` block reads, ``rms_norm`` what ``llama`` reads.
        """
        fn = {"layer_norm": F.layer_norm, "rms_norm": F.rms_norm}[norm]
        seen: set[bytes] = set()
        for chunk in self.matrix.split(8192):
            q = torch.round(fn(chunk, (chunk.shape[1],), eps=1e-5) / decimals).to(torch.int32).numpy()
            seen.update(row.tobytes() for row in q)
        return len(seen)

    def info(self) -> dict:
        """Spec, fingerprint, golden hash, shape, rank, explained variance and distinct rows, JSON-ready."""
        t = time.perf_counter()
        r = self.rank()
        shared = self.matrix.shape[0] - len({row.tobytes() for row in self.matrix.numpy()})
        return {"spec": self.spec.to_dict(), "fingerprint": self.fingerprint, "content_sha256": self.content_sha256,
                "shape": list(self.matrix.shape), "rank": r,
                "explained_variance": self.explained_variance(),
                "identical_rows": shared,  # tokens drawn alike (homoglyphs such as Latin A / Cyrillic A)
                "distinct_after_layer_norm": self.distinct_after_norm("layer_norm"),
                "distinct_after_rms_norm": self.distinct_after_norm("rms_norm"),
                "stats_seconds": round(time.perf_counter() - t, 2),
                "matrix_sha256": hashlib.sha256(self.matrix.numpy().tobytes()).hexdigest()}

    def check_same(self, other_fingerprint: str, what: str = "checkpoint", content_sha256: str | None = None) -> None:
        """Raise ``SubstrateMismatchError`` if the fingerprints differ, or the golden hashes when both are known."""
        if other_fingerprint != self.fingerprint:
            raise SubstrateMismatchError(
                f"substrate mismatch: this model's substrate is {self.fingerprint[:12]} "
                f"({self.spec.kind}, {self.spec.vocab}, d_model {self.spec.d_model}) but the {what} was "
                f"built on {other_fingerprint[:12]}; models can only be loaded, grown or composed on the "
                "substrate they were trained on")
        if content_sha256 and self.content_sha256 and content_sha256 != self.content_sha256:
            raise SubstrateMismatchError(
                f"substrate content mismatch: the {what} was trained on substrate {self.fingerprint[:12]} whose "
                f"pre-image hashed {content_sha256[:12]}, but this build of the same spec hashes "
                f"{self.content_sha256[:12]}; the {self.spec.kind} algorithm changed without a version bump "
                "(or this machine computes it differently): rebuild with the growlm version that trained it")
