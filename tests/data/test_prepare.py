"""Tests for growlm.data.prepare: preparing user corpora into shards, resuming, bad input, long documents,
the reader."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from growlm.data import prepare as data_mod
from growlm.data.documents import BadDocument, default_corpus_dir, load_documents, sha256_file
from growlm.data.prepare import DataWarning, is_validation, prepare, safe_chunks, unmerged_characters
from growlm.data.tokens import TokenData
from growlm.substrate import Tokenizer

EN = ["The quick brown fox jumps over the lazy dog.", "A second English document,\nwith two lines.",
      "Third: numbers 12345 and symbols <|eos|> stay text.", "Fourth one is short.", "Fifth and last."]


def _expected(docs: list[str], tok: Tokenizer, split: str, fraction: float = 0.1) -> list[int]:
    out: list[int] = []
    for d in docs:
        if is_validation(d, fraction) == (split == "val"):
            out += tok.encode(d) + [tok.eos_id]
    return out


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


def _corpus(root: Path, n: int = 60) -> list[str]:
    """A small English corpus in one jsonl file; returns its documents."""
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 60))) + f" {i}." for i in range(n)]
    root.mkdir(parents=True, exist_ok=True)
    _write_jsonl(root / "en.jsonl", docs)
    return docs


def _all_tokens(d: TokenData, lang: str, split: str) -> list[int]:
    return d.tokens(lang, split)[:].tolist()


# ---------------------------------------------------------------- formats and manifest


def test_prepare_reads_every_format(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    zstd = pytest.importorskip("zstandard")
    src = tmp_path / "corpus"
    (src / "en").mkdir(parents=True)
    (src / "en" / "a.txt").write_text(EN[0], encoding="utf-8")
    with gzip.open(src / "en" / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write(EN[1])
    with gzip.open(src / "en" / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"body": EN[2]}) + "\n")
    line = (json.dumps({"body": EN[3]}) + "\n").encode()  # one --text-field names the JSONL and Parquet text
    z = zstd.ZstdCompressor()  # two frames, the line cut between them, as parallel compressors write
    (src / "en" / "d.jsonl.zst").write_bytes(z.compress(line[:10]) + z.compress(line[10:]))
    pq.write_table(pa.table({"body": [EN[4], None], "lang": ["en", None]}), src / "en" / "e.parquet")
    meta = prepare(src, tmp_path / "out", text_field="body")
    tok = Tokenizer.load("compact")
    d = TokenData.open(tmp_path / "out")
    assert d.languages == ["en"] and meta["dtype"] == "uint16"
    for split in ("train", "val"):
        assert _all_tokens(d, "en", split) == _expected(EN, tok, split)
    assert sum(meta["languages"]["en"][s]["documents"] for s in ("train", "val")) == 5
    # the manifest: every input hashed, every shard's hash and counts right
    assert meta["sources"] == {str(p.relative_to(src)): sha256_file(p) for p in sorted(src.rglob("*")) if p.is_file()}
    for s in meta["shards"]:
        assert hashlib.sha256((tmp_path / "out" / s["path"]).read_bytes()).hexdigest() == s["sha256"]
        assert s["sources"] and set(s["sources"]) <= set(meta["sources"])
    with pytest.raises(ValueError, match="'text' string.*--text-field"):
        prepare(src, tmp_path / "out2")


def test_uint32_when_vocabulary_exceeds_uint16(tmp_path: Path, monkeypatch) -> None:
    class Big(Tokenizer):
        vocab_size = 70_000

    big = Big(Tokenizer.load("compact").vocab)
    monkeypatch.setattr(data_mod.Tokenizer, "load", classmethod(lambda cls, name="compact": big))
    docs = _corpus(tmp_path / "c", 10)
    meta = prepare(tmp_path / "c", tmp_path / "out")
    d = TokenData.open(tmp_path / "out")
    assert meta["dtype"] == "uint32" and d.tokens("en", "train")[:].dtype == np.uint32
    assert _all_tokens(d, "en", "train") == _expected(docs, big, "train")


def test_embedded_corpus_cli(tmp_path: Path) -> None:
    """`growlm prepare --out DIR` with no input still prepares the embedded corpus, same split as before."""
    from growlm.cli import main

    assert main(["prepare", "--out", str(tmp_path / "emb")]) == 0
    d = TokenData.open(tmp_path / "emb")
    assert d.languages == ["en", "ru", "zh"]
    docs = [t for lang, t in load_documents(default_corpus_dir()) if lang == "ru"]
    n_val = sum(is_validation(t, 0.1) for t in docs)
    assert d.meta["languages"]["ru"]["val"]["documents"] == n_val > 0


# ---------------------------------------------------------------- output directory, resume


def test_refuses_foreign_or_finished_output(tmp_path: Path) -> None:
    _corpus(tmp_path / "c", 5)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        prepare(tmp_path / "c", tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "x"
    with pytest.warns(DataWarning):
        prepare(tmp_path / "c", tmp_path / "done")
    with pytest.raises(FileExistsError, match="already holds"):
        prepare(tmp_path / "c", tmp_path / "done")


def test_resume_after_interrupt_gives_identical_output(tmp_path: Path, monkeypatch) -> None:
    _corpus(tmp_path / "c", 200)
    kw = dict(shard_tokens=400, batch_chars=600)
    ref = prepare(tmp_path / "c", tmp_path / "ref", **kw)
    assert len(ref["shards"]) > 6  # many segments, so the interruption falls in the middle

    calls = {"n": 0}
    real = Tokenizer.encode_batch

    def dying(self, texts):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt  # as if the process were stopped mid-segment
        return real(self, texts)

    monkeypatch.setattr(Tokenizer, "encode_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path / "c", tmp_path / "out", **kw)
    monkeypatch.setattr(Tokenizer, "encode_batch", real)
    with pytest.raises(FileNotFoundError, match="unfinished preparation"):
        TokenData.open(tmp_path / "out")
    with pytest.raises(ValueError, match="other settings.*shard_tokens"):
        prepare(tmp_path / "c", tmp_path / "out", shard_tokens=500, batch_chars=600)

    logged: list[str] = []
    meta = prepare(tmp_path / "c", tmp_path / "out", log=logged.append, **kw)
    assert logged[0].startswith("resuming") and "0 segment" not in logged[0]
    strip = lambda m: {k: v for k, v in m.items() if k != "corpus"}  # noqa: E731
    assert strip(meta) == strip(ref)
    for s in ref["shards"]:
        assert (tmp_path / "out" / s["path"]).read_bytes() == (tmp_path / "ref" / s["path"]).read_bytes()
    assert sorted(p.name for p in (tmp_path / "out" / "en").iterdir()) == \
        sorted(p.name for p in (tmp_path / "ref" / "en").iterdir())  # no temporary left behind


# ---------------------------------------------------------------- bad input


def test_non_utf8_document_names_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "c"
    src.mkdir()
    good = [json.dumps({"text": t}).encode() for t in EN[:4]]
    (src / "en.jsonl").write_bytes(b"\n".join(good[:2] + [b'{"text": "caf\xe9"}'] + good[2:]) + b"\n")
    with pytest.raises(BadDocument, match=r"en\.jsonl:3: not UTF-8.*--skip-bad"):
        prepare(src, tmp_path / "out")
    (tmp_path / "c2").mkdir()
    (tmp_path / "c2" / "doc.txt").write_bytes(b"line one\nline two \xff\n")
    with pytest.raises(BadDocument, match=r"doc\.txt:2: not UTF-8"):
        prepare(tmp_path / "c2", tmp_path / "out2")
    # with skip_bad the rest is prepared and the bad one counted, by file and line
    meta = prepare(src, tmp_path / "out3", skip_bad=True)
    assert meta["skipped"]["count"] == 1 and "en.jsonl:3: not UTF-8" in meta["skipped"]["documents"][0]
    d = TokenData.open(tmp_path / "out3")
    tok = Tokenizer.load("compact")
    assert _all_tokens(d, "en", "train") + _all_tokens(d, "en", "val") == \
        _expected(EN[:4], tok, "train") + _expected(EN[:4], tok, "val")


def test_lone_surrogate_and_bad_json_are_bad_documents(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "en.jsonl").write_text('{"text": "ok"}\n{"text": "x\\ud800y"}\n{"text": 5}\n', encoding="utf-8")
    with pytest.raises(BadDocument, match=r"en\.jsonl:2: not valid Unicode"):
        prepare(tmp_path / "c", tmp_path / "out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        meta = prepare(tmp_path / "c", tmp_path / "out2", skip_bad=True)
    assert meta["skipped"]["count"] == 2 and "en.jsonl:3: expected a JSON object" in meta["skipped"]["documents"][1]


def test_one_document_corpus_warns_of_empty_split(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    _write_jsonl(tmp_path / "c" / "en.jsonl", ["only one document here"])
    with pytest.warns(DataWarning, match=r"no validation document was held out for \['en'\].*--val-fraction"):
        prepare(tmp_path / "c", tmp_path / "out")
    d = TokenData.open(tmp_path / "out")
    with pytest.raises(ValueError, match="validation split has 0 tokens"):
        d.val_windows("en", 8)


# ---------------------------------------------------------------- long documents


def test_safe_chunks_keep_token_ids() -> None:
    rng = random.Random(1)
    alphabet = ["ab", " ", "  ", "\n", "\t", "中文", "é", "<|eos|>", "\u3000", "\xa0", ".", "x" * 30, " " * 30, "\x1c"]
    docs = [t for _, t in load_documents(default_corpus_dir(), "zh")][:3]
    for vocab in ("compact", "bvv241-2-3"):  # pieces + greedy longest match; BPE over the whole text
        tok = Tokenizer.load(vocab)
        unmerged = unmerged_characters(tok)
        assert (unmerged is None) == (vocab == "compact")
        for trial in range(60):
            text = ("".join(rng.choice(alphabet) for _ in range(rng.randint(50, 1500))) if trial % 2
                    else "".join(docs).replace(" ", "")[:4000])
            chunks = safe_chunks(text, rng.choice([7, 30, 100, 700]), unmerged)
            assert "".join(chunks) == text
            assert [i for c in chunks for i in tok.encode(c)] == tok.encode(text), (vocab, trial)
    assert len(safe_chunks("中" * 10_000, 100)) > 50  # a run without spaces is still cut


_MEASURE = """
import json, resource, sys, tempfile, warnings
from pathlib import Path
from growlm.data.prepare import prepare
from growlm.substrate import Tokenizer
n = int(sys.argv[1]); d = Path(tempfile.mkdtemp(dir=sys.argv[2]))
(d / "c").mkdir()
(d / "c" / "en.jsonl").write_text(json.dumps({"text": ("lorem ipsum dolor sit amet " * (n // 27 + 1))[:n]}) + "\\n")
Tokenizer.load("compact").encode_batch(["warm up"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
warnings.simplefilter("ignore")
prepare(d / "c", d / "out", batch_chars=1 << 18)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_long_document_memory_is_bounded(tmp_path: Path) -> None:
    """A 4 MB line costs little more peak memory than a 1 MB line (it was about 220 bytes per character)."""
    growth = []
    for n in (1 << 20, 4 << 20):
        r = subprocess.run([sys.executable, "-c", _MEASURE, str(n), str(tmp_path)], capture_output=True, text=True,
                           check=True)
        growth.append(int(r.stdout.split()[-1]))
    assert growth[1] - growth[0] < 40 * 3 << 20, growth  # < 40 bytes per extra character (3 MB more text)


# ---------------------------------------------------------------- the reader


def test_reader_samples_across_shards_in_proportion(tmp_path: Path, monkeypatch) -> None:
    _corpus(tmp_path / "c", 200)
    prepare(tmp_path / "c", tmp_path / "out", shard_tokens=300, batch_chars=500, val_fraction=0.3)
    opened: list[str] = []
    real = np.memmap

    def counting(*a, **k):
        opened.append(str(a[0]))
        return real(*a, **k)

    monkeypatch.setattr(np, "memmap", counting)
    d = TokenData.open(tmp_path / "out")
    stream = d.tokens("en", "train")
    assert len(stream.sizes) > 5 and stream.size == sum(stream.sizes)
    shards = [np.fromfile(p, dtype=np.uint16) for p in stream.paths]
    owner = {s[i:i + 17].tobytes(): k for k, s in enumerate(shards) for i in range(len(s) - 16)}
    hits = np.zeros(len(shards))
    g = torch.Generator().manual_seed(0)
    seq = 16
    for _ in range(60):
        x, y = d.sample_batch({"en": 1.0}, 16, seq, g)
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in torch.cat([x, y[:, -1:]], 1).numpy():
            k = owner.get(row.astype(np.uint16).tobytes())
            assert k is not None, "a window that is not inside one shard"
            hits[k] += 1
    assert len(opened) == len(set(opened)) <= len(shards)  # each shard mapped once, not per batch
    expected = np.array([max(0, len(s) - seq - 1) for s in shards], dtype=float)
    expected *= hits.sum() / expected.sum()
    assert np.abs(hits - expected).max() < 5 * np.sqrt(expected.max()) + 5
    # validation reads the shards as one stream, in document order
    val = d.tokens("en", "val")
    w = d.val_windows("en", 8)
    assert len(val.sizes) > 1
    assert torch.equal(w[:, :-1].reshape(-1), torch.from_numpy(val[:len(w) * 8].astype(np.int64)))


def test_reads_format_1_and_refuses_broken_directories(tmp_path: Path) -> None:
    tok = Tokenizer.load("compact")
    root = tmp_path / "old"
    (root / "en").mkdir(parents=True)
    train = np.array(tok.encode(" ".join(EN * 20)) + [tok.eos_id], dtype=np.uint16)
    train.tofile(root / "en" / "train.bin")
    (root / "en" / "val.bin").write_bytes(b"")
    counts = {"documents": 1, "tokens": len(train), "characters": 10}
    meta = {"format": "growlm-tokens-1", "vocab": tok.name, "vocab_sha256": tok.vocab.sha256, "dtype": "uint16",
            "languages": {"en": {"train": counts, "val": {"documents": 0, "tokens": 0, "characters": 0}}}}
    (root / "meta.json").write_text(json.dumps(meta))
    d = TokenData.open(root)
    x, _ = d.sample_batch({"en": 1.0}, 2, 8, torch.Generator().manual_seed(0))
    assert x.shape == (2, 8) and d.tokens("en", "val").size == 0
    # a truncated shard and an unknown format are refused with what to do
    (root / "meta.json").write_text(json.dumps({**meta, "format": "growlm-tokens-9"}))
    with pytest.raises(ValueError, match="re-run `growlm prepare`"):
        TokenData.open(root)
    _corpus(tmp_path / "c", 20)
    m = prepare(tmp_path / "c", tmp_path / "new")
    shard = tmp_path / "new" / m["shards"][0]["path"]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"train-00000\.bin has .* bytes, expected .*re-run `growlm prepare`"):
        TokenData.open(tmp_path / "new")


def test_cli_names_the_bad_line_and_skips_with_the_flag(tmp_path: Path, capsys) -> None:
    from growlm.cli import main

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "en.jsonl").write_bytes(b'{"text": "fine text here"}\n{"text": "bad \xff"}\n' * 3)
    assert main(["prepare", str(tmp_path / "c"), "--out", str(tmp_path / "o")]) == 2
    assert "en.jsonl:2: not UTF-8" in capsys.readouterr().err
    # the same --out resumes with --skip-bad (segments written so far had no bad document)
    with pytest.warns(DataWarning):
        assert main(["prepare", str(tmp_path / "c"), "--out", str(tmp_path / "o"), "--skip-bad", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["skipped"] == 3 and "skipped 3 bad document(s)" in out.err
    assert main(["prepare", str(tmp_path / "c"), "--out", str(tmp_path / "o")]) == 2
    assert "already holds prepared tokens" in capsys.readouterr().err


# ---------------------------------------------------------------- unreadable inputs, a full disk


@pytest.mark.parametrize("name", ["en.jsonl.gz", "en.txt.gz", "en.parquet"])
def test_truncated_or_corrupt_input_names_the_file(tmp_path: Path, name: str, capsys) -> None:
    from growlm.cli import main

    corpus = tmp_path / "c"
    corpus.mkdir()
    docs = [f"document {i} " * 200 for i in range(50)]
    target = corpus / name
    if name.endswith(".parquet"):
        pq = pytest.importorskip("pyarrow.parquet")
        pa = pytest.importorskip("pyarrow")
        pq.write_table(pa.table({"text": docs}), target)
    else:
        text = "\n".join(json.dumps({"text": d}) for d in docs) if "jsonl" in name else "\n\n".join(docs)
        target.write_bytes(gzip.compress(text.encode()))
    data = target.read_bytes()
    target.write_bytes(data[:len(data) // 2])  # cut short, as a failed download leaves it
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "truncated or corrupt" in err and "Traceback" not in err, err


def test_full_disk_names_the_file_and_leaves_no_temporary_shard(tmp_path: Path, tiny_corpus: Path) -> None:
    script = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
from growlm.cli import main
sys.exit(main(["prepare", {str(tiny_corpus)!r}, "--out", {str(tmp_path / "out")!r}, "--no-progress"]))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "File too large" in r.stderr and str(tmp_path / "out") in r.stderr and "Traceback" not in r.stderr
    assert not [p for p in (tmp_path / "out").rglob("*.tmp")]
