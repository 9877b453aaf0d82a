"""Corpora -> sharded token files, written once (``growlm prepare``); ``growlm.data.tokens`` reads them.

``prepare`` tokenises a corpus once into shards ``<lang>/<split>-NNNNN.bin``
(documents each followed by the end-of-document id, uint16 where V <= 65536,
else uint32, memory-mapped at training time) and one ``meta.json``: the
vocabulary, counts per language and split, and a manifest of every shard (tokens,
documents, characters, SHA-256, source files) and every input file (SHA-256).
The train/validation split is by document, decided by a salted hash of the
document's text, so it never changes when documents are added or reordered.

Preparation streams with bounded memory: documents are read one at a time,
encoded ``batch_chars`` characters at a time (the tokenizer encodes a batch on all
cores), and long documents are cut at piece boundaries first (see
``safe_chunks``), which leaves their token ids unchanged. A *segment* of about
``shard_tokens`` tokens is written, fsynced and recorded in a progress file before
the next begins, so an interrupted preparation resumes at the last whole segment.

"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from growlm.data.documents import (
    BadDocument,
    Document,
    TextSplit,
    corpus_files,
    default_corpus_dir,
    iter_documents,
)
from growlm.data.hub import hub_files, is_hub_name
from growlm.substrate import Tokenizer
from growlm.substrate.substrate import cache_dir
from growlm.util.fileio import append_durable, atomic_write_text, check_not_input, fsync_dir

DATA_FORMAT = "growlm-tokens-2"
OLD_FORMATS = ("growlm-tokens-1",)  # one <lang>/<split>.bin per language and split; still read
VAL_FRACTION = 0.1  # share of documents held out (the embedded corpus has only ~200-280 per language)
SHARD_TOKENS = 1 << 27  # tokens per segment (a shard per language and split): 256 MB of uint16
BATCH_CHARS = 1 << 20  # characters encoded per tokenizer call: bounds memory, keeps all cores busy
CHUNK_CHARS = 1 << 16  # longer documents are cut into chunks of about this size before encoding
WINDOW_CHARS = 1 << 20  # a longer document is cut into chunks one window at a time (never copied whole)
PROGRESS = ".prepare-progress"  # JSON lines; no corpus suffix, so a corpus folder may hold its output


class OutputExists(FileExistsError, ValueError):
    """``--out`` holds something ``prepare`` must not overwrite (a ValueError too, so the CLI reports it briefly)."""


class DataWarning(UserWarning):
    """A prepared corpus that will not train or validate as expected (e.g. a language with no validation)."""


def is_validation(text: str, fraction: float) -> bool:
    """Deterministic document-level split: True for about ``fraction`` of documents.

    The hash is salted so that the split is independent of any selection made by a plain
    sha256 of the text (the embedded corpus picks its documents that way).
    """
    h = int.from_bytes(hashlib.sha256(b"growlm/split/1\0" + text.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < fraction


# ------------------------------------------------------------------ long documents

_PIECE_RUN = 23  # PIECE_PATTERN " ?[^\s]{1,23}|\s{1,24}": a run of non-space splits every 23 characters
_ASCII_SPACE = " \t\n\r\x0b\x0c"


def safe_chunks(text: str, size: int = CHUNK_CHARS, unmerged: frozenset[str] | None = None) -> list[str]:
    """Cut ``text`` into chunks of about ``size`` characters whose token ids concatenate to the text's ids.

    Piece tokenizers (``bmp``, ``compact``; ``unmerged`` None) split text into pieces by
    ``PIECE_PATTERN`` (no look-behind, no look-ahead) and encode every piece on its own, so cutting
    at a piece boundary changes nothing. Two kinds of positions are piece boundaries whatever
    precedes them: between a non-space character and an ASCII space character (no piece spans
    both), and, inside a run of non-space characters that starts after an ASCII space, every 23rd
    character from the run's start (the run's pieces are 23 characters, the first possibly led by
    one space). BPE over the whole text (``bvv``): ``unmerged`` holds the characters that no
    vocabulary token of two or more characters contains (space and line breaks among them); no
    merge touches them, so the text on either side is merged independently and a cut right after
    one changes nothing. Where no boundary is found the chunk grows until one is: memory stays
    bounded by the longest such stretch.
    """
    if len(text) <= size:
        return [text]
    out, start = [], 0
    while len(text) - start > size:
        if unmerged is None:
            cut = _cut_before(text, start, start + size) or _cut_after(text, start + size)
        else:
            cut = _cut_unmerged(text, start, start + size, unmerged)
        if cut is None:
            break
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def unmerged_characters(tok: Tokenizer) -> frozenset[str] | None:
    """For a tokenizer without pieces (BPE over the whole text): characters in no multi-character token."""
    if tok.hf.pre_tokenizer is not None:
        return None
    if tok.vocab.sha256 not in _UNMERGED:
        texts = [t.text for t in tok.vocab.tokens if t.kind not in ("special", "byte")]
        inside = {c for t in texts if len(t) > 1 for c in t}
        _UNMERGED[tok.vocab.sha256] = frozenset(t for t in texts if len(t) == 1 and t not in inside)
    return _UNMERGED[tok.vocab.sha256]


_UNMERGED: dict[str, frozenset[str]] = {}


def _cut_unmerged(text: str, lo: int, t: int, unmerged: frozenset[str]) -> int | None:
    """Just after the last unmerged character in the second half of lo .. t, else the first after t."""
    for c in range(t, (lo + t) // 2, -1):
        if text[c - 1] in unmerged:
            return c
    for c in range(t + 1, len(text)):
        if text[c - 1] in unmerged:
            return c
    return None


def _is_cut(text: str, c: int) -> bool:
    return text[c] in _ASCII_SPACE and not text[c - 1].isspace()


def _run_cut(text: str, lo: int, t: int) -> int | None:
    """A boundary at or before ``t`` inside a run of non-space characters, 23-aligned from the run's start.

    ``lo`` (the chunk's start) is itself a boundary, so a run reaching back to it is aligned from it.
    """
    r = t
    while r > lo and not text[r - 1].isspace():
        r -= 1
    if r > lo and text[r - 1] not in _ASCII_SPACE:
        return None  # a Unicode space: the tokenizer's regex may class it differently
    if "<|" in text[r:t + 2]:
        return None
    k = (t - r) // _PIECE_RUN  # k = 0 would cut at the run's start, which may follow its leading space
    return r + k * _PIECE_RUN if k > 0 else None


def _cut_before(text: str, lo: int, t: int) -> int | None:
    """The last boundary in the second half of lo .. t, or None."""
    for c in range(t, (lo + t) // 2, -1):
        if _is_cut(text, c):
            return c
    return _run_cut(text, lo, t) if not text[t].isspace() else None


def _cut_after(text: str, t: int) -> int | None:
    """The first boundary after ``t`` (a long stretch of spaces or of unsafe text), or None."""
    for c in range(t + 1, len(text)):
        if _is_cut(text, c):
            return c
    return None


# ------------------------------------------------------------------ prepare


@dataclass
class _Shard:
    """A shard being written: a temporary file, its hash and counts."""

    path: Path
    dtype: np.dtype
    lang: str
    split: str
    sources: set[str] = field(default_factory=set)
    tokens: int = 0
    documents: int = 0
    characters: int = 0

    def __post_init__(self) -> None:
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.f = open(self.tmp, "wb")
        self.sha = hashlib.sha256()

    def write(self, ids: np.ndarray) -> None:
        data = ids.astype(self.dtype, copy=False).tobytes()
        try:
            self.f.write(data)
        except OSError as e:  # the OS names no file for a full disk or a size limit
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self.sha.update(data)
        self.tokens += len(ids)

    def discard(self) -> None:
        """Close and delete the temporary file (the shard is not kept)."""
        try:
            self.f.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)

    def close(self, root: Path) -> dict:
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self.f.close()
        os.replace(self.tmp, self.path)
        return {"path": str(self.path.relative_to(root)), "lang": self.lang, "split": self.split,
                "tokens": self.tokens, "documents": self.documents, "characters": self.characters,
                "sha256": self.sha.hexdigest(), "sources": sorted(self.sources)}


def _append_line(path: Path, obj: dict) -> None:
    append_durable(path, json.dumps(obj, ensure_ascii=False))


def _read_progress(path: Path) -> list[dict]:
    """Records of a progress file; a last line cut short by a crash is ignored."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def prepare(corpus: str | Path | None, out_dir: str | Path, vocab: str = "compact",
            val_fraction: float = VAL_FRACTION, *, text_field: str = "text", skip_bad: bool = False,
            split: TextSplit | None = None, shard_tokens: int = SHARD_TOKENS, batch_chars: int = BATCH_CHARS,
            chunk_chars: int = CHUNK_CHARS, log: Callable[[str], None] | None = None, progress: bool = False,
            hub_split: str = "train") -> dict:
    """Tokenise ``corpus`` (default: the embedded corpus) into sharded token files under ``out_dir``.

    Returns the metadata written to ``meta.json``. ``out_dir`` must be new or empty, or an
    interrupted preparation of the same corpus with the same settings, which is resumed; if only the
    input files changed since (a bad document fixed), what it wrote is removed and preparation starts over.
    ``text_field`` names the JSONL field and the Parquet column holding the text; ``split`` how a .txt
    file becomes documents (default :class:`TextSplit`: blank-line paragraphs grouped to about 20,000
    characters). A bad document (not UTF-8, invalid JSON) stops preparation with its file and line, or
    with ``skip_bad`` is left out and counted. A language left without validation (or training)
    documents gets a :class:`DataWarning`. ``progress`` shows a bar (input bytes, throughput, ETA).
    ``corpus`` may also be a ``datasets`` ``save_to_disk`` folder (its .arrow files) or ``hf:NAME[:CONFIG]``, a hub
    dataset (``hub_split`` of it), downloaded by ``datasets`` (see :mod:`growlm.data.hub`).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1 or batch_chars < 1 or chunk_chars < 1:
        raise ValueError("shard_tokens, batch_chars and chunk_chars must be positive")
    split = TextSplit() if split is None else split
    listed = None
    if is_hub_name(corpus):
        root, listed = hub_files(str(corpus), hub_split)
    else:
        root = Path(corpus) if corpus else default_corpus_dir()
    files = corpus_files(root, listed)
    base = root if root.is_dir() else root.parent
    tok = Tokenizer.load(vocab)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 65536 else np.uint32)
    out = Path(out_dir)
    check_not_input(out, [root], "--out")  # the token files never go into (or around) the corpus they come from
    settings = {"format": DATA_FORMAT, "vocab": tok.name, "vocab_sha256": tok.vocab.sha256,
                "val_fraction": val_fraction, "text_field": text_field,  # not skip_bad: may be added on resuming
                "txt_split": {"separator": split.separator, "doc_chars": split.doc_chars},
                "shard_tokens": shard_tokens, "batch_chars": batch_chars, "chunk_chars": chunk_chars,
                "corpus": str(corpus) if is_hub_name(corpus) else str(root.resolve()),
                "inputs": [[str(p.relative_to(base)), p.stat().st_size] for p in files]}
    progress_file = out / PROGRESS
    say = log or (lambda m: None)
    records = _start_or_resume(out, progress_file, settings, say)
    if records:
        say(f"resuming {out}: {len(records)} segment(s) already written")

    hashes: dict[int, str] = {int(k): v for r in records for k, v in r["hashes"].items()}
    skipped: list[BadDocument] = []
    start = tuple(records[-1]["end"]) if records else (0, 0)
    sizes = [p.stat().st_size for p in files]
    bar = _progress_bar(sum(sizes), sum(sizes[:start[0]]), progress)
    split_docs: dict[int, int] = {}
    docs = iter_documents(root, text_field=text_field, on_error="skip" if skip_bad else "raise",
                          skipped=skipped, start=start, hashes=hashes, split=split, txt_documents=split_docs,
                          on_read=bar.update if bar else None, files=listed)
    rels = [str(p.relative_to(base)) for p in files]
    segment = len(records)
    while True:
        try:
            record = _write_segment(docs, tok, dtype, out, segment, rels, val_fraction, shard_tokens, batch_chars,
                                    chunk_chars, bar)
        except BadDocument as e:
            raise BadDocument(e.where, f"{e.reason}; fix it and run the same command again (it starts over), or "
                              "leave such documents out with --skip-bad (skip_bad=True)") from None
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        if record is None:
            break
        record["hashes"] = {str(k): v for k, v in hashes.items() if str(k) not in
                            {k2 for r in records for k2 in r["hashes"]}}
        record["skipped"] = [str(e) for e in skipped]
        skipped.clear()
        _append_line(progress_file, record)
        records.append(record)
        segment += 1
        if bar is None:
            say(f"segment {segment}: {sum(s['tokens'] for s in record['shards']):,} tokens")
    if bar is not None:
        bar.close()
    if split_docs and max(split_docs.values()) > 1:
        many = {rels[i]: n for i, n in split_docs.items() if n > 1}
        say(f"split {len(many)} .txt file(s) into {sum(many.values()):,} documents {split.describe()} (e.g. "
            f"{next(iter(many))}: {next(iter(many.values())):,}); --doc-chars 0 keeps each file one document, "
            "--doc-separator names your own separator")
    return _finish(out, progress_file, settings, records, hashes, rels, tok, dtype, root, log,
                   [str(e) for e in skipped], split)


def _progress_bar(total: int, done: int, enabled: bool):
    """A tqdm bar over the input's bytes (throughput, ETA), or None."""
    if not enabled:
        return None
    return tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare",
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def _start_or_resume(out: Path, progress: Path, settings: dict, say: Callable[[str], None]) -> list[dict]:
    """Check ``out`` (new, empty, or an interrupted preparation with these settings); records done so far.

    An interrupted preparation whose settings differ only in its input files (a bad document was fixed) is
    removed (the shards and the progress file it wrote, nothing else) and started over.
    """
    if (out / "meta.json").exists():
        raise OutputExists(f"{out} already holds prepared tokens (meta.json); choose a new --out")
    if progress.exists():
        lines = _read_progress(progress)
        if not lines or lines[0] != {"settings": settings}:
            old = lines[0].get("settings", {}) if lines else {}
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            if diff != ["inputs"]:
                raise ValueError(f"{out} holds an interrupted preparation with other settings ({', '.join(diff)} "
                                 "differ); re-run with its settings or choose a new --out")
            _remove_partial(out, progress, lines[1:])
            say(f"{out}: the input files changed since the interrupted preparation; starting over")
        else:
            return lines[1:]
    elif out.exists() and any(out.iterdir()):
        raise OutputExists(f"{out} is not empty and is not a growlm preparation; choose a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    _append_line(progress, {"settings": settings})
    return []


def _remove_partial(out: Path, progress: Path, records: list[dict]) -> None:
    """Remove what an interrupted preparation wrote: its finished shards, temporary shards and progress file."""
    for r in records:
        for sh in r["shards"]:
            (out / sh["path"]).unlink(missing_ok=True)
    for tmp in out.glob("*/.*.bin.tmp"):
        tmp.unlink()
    progress.unlink()
    for d in out.iterdir():
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    fsync_dir(out)


def _write_segment(docs: Iterator[Document], tok: Tokenizer, dtype: np.dtype, out: Path, segment: int,
                   rels: list[str], val_fraction: float, shard_tokens: int, batch_chars: int,
                   chunk_chars: int, bar=None) -> dict | None:
    """Encode documents into one shard per language and split until ``shard_tokens``; None if none were left."""
    shards: dict[tuple[str, str], _Shard] = {}
    try:
        batch: list[Document] = []
        size = tokens = 0
        end = None
        for doc in docs:
            batch.append(doc)
            size += len(doc.text)
            end = (doc.file, doc.line)
            del doc
            if size >= batch_chars:
                tokens += _encode_batch(batch, tok, dtype, out, segment, rels, shards, val_fraction, chunk_chars,
                                        batch_chars)
                batch, size = [], 0
                if bar is not None:
                    bar.set_postfix_str(f"{tokens:,} tokens in this segment", refresh=False)
                if tokens >= shard_tokens:
                    break
        if batch:
            _encode_batch(batch, tok, dtype, out, segment, rels, shards, val_fraction, chunk_chars, batch_chars)
            batch.clear()
        if end is None:
            return None
        written = [s.close(out) for _, s in sorted(shards.items())]
        for d in {s.path.parent for s in shards.values()}:
            fsync_dir(d)
        return {"segment": segment, "end": list(end), "shards": written}
    except BaseException:  # a full disk, a bad document, an interrupt: no temporary shard is left behind
        for sh in shards.values():
            sh.discard()
        raise


def _encode_batch(batch: list[Document], tok: Tokenizer, dtype: np.dtype, out: Path, segment: int,
                  rels: list[str], shards: dict, val_fraction: float, chunk_chars: int, batch_chars: int) -> int:
    """Encode a batch of documents and append each, with its end-of-document id, to its shard; returns tokens.

    Documents are cut into chunks (``safe_chunks``) and encoded at most ``batch_chars`` characters per
    tokenizer call; each call's ids are written to their shards at once, in document order, so the
    tokenizer's per-token objects and the ids of a long document never exist for more than one call's
    worth of text.
    """
    keys = []
    for d in batch:
        key = (d.lang or "unk", "val" if _is_validation_long(d.text, val_fraction) else "train")
        if key not in shards:
            (out / key[0]).mkdir(exist_ok=True)
            shards[key] = _Shard(out / key[0] / f"{key[1]}-{segment:05d}.bin", dtype, *key)
        s = shards[key]
        s.documents += 1
        s.characters += len(d.text)
        s.sources.add(rels[d.file])
        keys.append(key)
    eos = np.array([tok.eos_id], dtype=dtype)
    group: list[tuple[int, str]] = []
    total = size = 0

    def encode() -> None:
        nonlocal total
        for (i, _), ids in zip(group, tok.encode_batch([c for _, c in group])):
            arr = np.array(ids, dtype=dtype)
            shards[keys[i]].write(arr)
            total += len(arr)
        group.clear()

    unmerged = unmerged_characters(tok)
    for i, d in enumerate(batch):
        for c in _iter_chunks(d.text, chunk_chars, unmerged):
            group.append((i, c))
            size += len(c)
            if size >= batch_chars:
                encode()
                size = 0
        if group:  # the document's last chunk may still wait: its end-of-document id follows it
            encode()
            size = 0
        shards[keys[i]].write(eos)
        total += 1
    return total


def _iter_chunks(text: str, size: int, unmerged: frozenset[str] | None) -> Iterator[str]:
    """``safe_chunks`` of ``text`` one window at a time, so a long document is never copied whole."""
    window = max(size * 16, WINDOW_CHARS)
    if len(text) <= window:
        yield from safe_chunks(text, size, unmerged)
        return
    start = 0
    while len(text) - start > window:
        chunks = safe_chunks(text[start:start + window], size, unmerged)
        # the last chunk may continue past the window (and a cut near its end saw too little of what follows):
        # only chunks ending well inside the window are kept, the rest is cut again with what follows
        done, kept = 0, []
        for c in chunks[:-1]:
            if done + len(c) > window - 64:
                break
            kept.append(c)
            done += len(c)
        if not kept:  # no boundary in the window: take the rest whole
            break
        yield from kept
        start += done
    yield from safe_chunks(text[start:], size, unmerged)


def _is_validation_long(text: str, fraction: float) -> bool:
    """``is_validation`` hashing the text in blocks (a long document is not encoded whole at once)."""
    if len(text) <= BATCH_CHARS:
        return is_validation(text, fraction)
    h = hashlib.sha256(b"growlm/split/1\0")
    for i in range(0, len(text), BATCH_CHARS):
        h.update(text[i:i + BATCH_CHARS].encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest()[:8], "big") / 2**64 < fraction


def _finish(out: Path, progress: Path, settings: dict, records: list[dict], hashes: dict[int, str],
            rels: list[str], tok: Tokenizer, dtype: np.dtype, root: Path, log, skipped_after: list[str],
            split: TextSplit) -> dict:
    """Write meta.json (counts, manifest), warn about empty splits, remove the progress file."""
    shards = [s for r in records for s in r["shards"]]
    skipped = [e for r in records for e in r["skipped"]] + skipped_after
    if not shards:
        raise ValueError(f"corpus {root} has no documents" + (f" ({len(skipped)} skipped as bad)" if skipped else ""))
    langs: dict[str, dict[str, dict[str, int]]] = {}
    for s in shards:
        c = langs.setdefault(s["lang"], {sp: {"documents": 0, "tokens": 0, "characters": 0} for sp in ("train", "val")})
        for k in ("documents", "tokens", "characters"):
            c[s["split"]][k] += s[k]
    unheld = sorted(lang for lang, c in langs.items() if c["val"]["documents"] == 0)
    if unheld:  # grow refuses such token files (no validation), so say it now
        warnings.warn(f"no validation document was held out for {unheld} ({root}, val_fraction "
                      f"{settings['val_fraction']}): training on these token files will be refused; give more "
                      "documents, a larger --val-fraction, or cut long .txt files into more documents (a smaller "
                      "--doc-chars, or --doc-separator)", DataWarning, stacklevel=3)
    untrained = sorted(lang for lang, c in langs.items() if c["train"]["documents"] == 0)
    if untrained:
        warnings.warn(f"every document of {untrained} was held out for validation ({root}): a mixture naming "
                      "them cannot train; give more documents or a smaller --val-fraction", DataWarning,
                      stacklevel=3)
    if skipped:
        msg = f"skipped {len(skipped)} bad document(s), e.g. {skipped[0]}"
        (log or (lambda m: print(m, file=sys.stderr)))(msg)
    meta = {"format": DATA_FORMAT, "vocab": tok.name, "vocab_version": tok.vocab.version,
            "vocab_sha256": tok.vocab.sha256, "vocab_size": tok.vocab_size, "dtype": dtype.name,
            "eos_id": tok.eos_id, "val_fraction": settings["val_fraction"], "corpus": str(root),
            "sources": {rels[i]: h for i, h in sorted(hashes.items())},
            "skipped": {"count": len(skipped), "documents": skipped[:100]},
            "languages": {k: langs[k] for k in sorted(langs)}, "shards": shards,
            "settings": {**{k: settings[k] for k in ("text_field", "txt_split", "shard_tokens", "batch_chars",
                                                     "chunk_chars")}, "txt_split_described": split.describe()}}
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1, ensure_ascii=False))
    progress.unlink()
    fsync_dir(out)
    return meta


def default_tokens(vocab: str = "compact") -> Path:
    """The embedded corpus tokenised with ``vocab``, prepared once into the cache directory."""
    v = Tokenizer.load(vocab).vocab
    root = cache_dir().parent / "data" / f"default-{v.name}-{v.sha256[:10]}-split1-{VAL_FRACTION}-{DATA_FORMAT}"
    if not (root / "meta.json").exists():
        tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from a killed process with this pid
        prepare(None, tmp, vocab)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
        fsync_dir(root.parent)
    return root
