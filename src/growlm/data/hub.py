"""Hugging Face hub datasets for ``growlm prepare hf:NAME``: downloaded by ``datasets`` only when named.

``datasets.load_dataset`` keeps a dataset as Arrow files in its cache; ``prepare`` reads those files
as it reads a ``save_to_disk`` folder (``growlm.data.documents``), so nothing is copied.
"""

from __future__ import annotations

from pathlib import Path

HUB_PREFIX = "hf:"


def is_hub_name(corpus: str | Path | None) -> bool:
    """True for ``hf:NAME`` or ``hf:NAME:CONFIG`` (a hub dataset the user named)."""
    return isinstance(corpus, str) and corpus.startswith(HUB_PREFIX)


def hub_files(corpus: str, split: str = "train") -> tuple[Path, list[Path]]:
    """The cache directory and Arrow files of ``split`` of the hub dataset ``hf:NAME[:CONFIG]``, downloading it
    with ``datasets`` if it is not cached. Offline or unknown: a ValueError that says how to use a local copy."""
    spec = corpus[len(HUB_PREFIX):]
    name, _, config = spec.partition(":")
    if not name:
        raise ValueError(f"{corpus!r}: name a hub dataset, e.g. hf:roneneldan/TinyStories (or hf:NAME:CONFIG)")
    try:
        import datasets  # deferred: optional (the hub extra), for hf: corpora only
    except ImportError:
        raise ImportError("a hub dataset needs the datasets package: pip install 'growlm[data]'") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # offline, unknown name, no such split: datasets raises many kinds
        raise ValueError(
            f"could not load the hub dataset {name!r}{f' ({config})' if config else ''}, split {split!r}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Offline or behind a firewall? On a "
            "machine that can download it, run `datasets.load_dataset(NAME).save_to_disk(DIR)` (or save it as "
            ".jsonl/.parquet), copy DIR here and run `growlm prepare DIR`") from None
    files = [Path(c["filename"]) for c in ds.cache_files]
    if not files:
        raise ValueError(f"hub dataset {name!r} split {split!r} has no cache files (an in-memory dataset); save it "
                         "with save_to_disk and prepare that folder")
    return files[0].parent, files
