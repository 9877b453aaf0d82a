"""Tests for a user's own text in growlm prepare: one long .txt file split into documents, one --text-field,
a failed preparation started over once the input is fixed, long lines encoded in windows, the progress bar."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from growlm.data import documents as docs_mod
from growlm.data import prepare as prep_mod
from growlm.data.documents import BadDocument, TextSplit, iter_documents
from growlm.data.prepare import is_validation, prepare
from growlm.data.tokens import TokenData
from growlm.substrate import Tokenizer


def _book(paragraphs: int = 400) -> str:
    words = "whan that aprille with his shoures soote the droghte of march hath perced to the roote".split()
    return "\n\n".join(" ".join(words[(i + j) % len(words)] for j in range(8 + i % 30)) + f" {i}."
                       for i in range(paragraphs)) + "\n"


def test_one_book_becomes_many_documents_and_trains(tmp_path: Path) -> None:
    """A single .txt file (nanoGPT's input.txt) was one document, so nothing was held out; now it is split."""
    src = tmp_path / "input.txt"
    src.write_text(_book(), encoding="utf-8")
    logs: list[str] = []
    meta = prepare(src, tmp_path / "out", split=TextSplit(doc_chars=1000), log=logs.append)
    c = meta["languages"]["unk"]
    assert c["val"]["documents"] > 0 and c["train"]["documents"] > 20
    assert any("split 1 .txt file(s) into" in m and "blank lines" in m for m in logs)
    assert meta["settings"]["txt_split"] == {"separator": None, "doc_chars": 1000}
    # the documents are the book's paragraphs, grouped, nothing lost or added but the whitespace at the cuts
    got = [d.text for d in iter_documents(src, split=TextSplit(doc_chars=1000))]
    assert "\n\n".join(got) == src.read_text(encoding="utf-8").rstrip("\n") + "\n"
    assert max(len(t) for t in got) <= 2000
    # the old behaviour on request: one document, so no validation split
    with pytest.warns(prep_mod.DataWarning, match="doc-chars"):
        meta = prepare(src, tmp_path / "whole", split=TextSplit(doc_chars=0))
    assert meta["languages"]["unk"]["train"]["documents"] + meta["languages"]["unk"]["val"]["documents"] == 1


def test_split_separator_and_long_stretches(monkeypatch) -> None:
    monkeypatch.setattr(docs_mod, "BLOCK", 5)  # decode in tiny blocks: multi-byte characters straddle them

    def split(text: str, **kw) -> list[str]:
        return [x[1][1] for x in docs_mod._txt_docs(io.BytesIO(text.encode()), "f", None, 0, TextSplit(**kw))]

    assert split("é one<|e|>two\n<|e|><|e|>three é", separator="<|e|>") == ["é one", "two", "three é"]
    assert split("short\n\nfile\n", doc_chars=100) == ["short\n\nfile\n"]  # shorter than doc_chars: unchanged
    no_blank = "wörd " * 100  # no blank line, no line break: cut at spaces
    parts = split(no_blank, doc_chars=60)
    assert " ".join(parts) == no_blank.rstrip() + " " or " ".join(parts) == no_blank.strip()
    assert all(len(p) <= 120 for p in parts) and len(parts) > 5
    bad = list(docs_mod._txt_docs(io.BytesIO(b"ok\n\nline two \xff\n"), "f", None, 0, TextSplit()))
    assert isinstance(bad[-1][1], BadDocument) and "f:3" in str(bad[-1][1]) and "byte offset 13" in str(bad[-1][1])
    with pytest.raises(ValueError, match="empty"):
        TextSplit(separator="")


def test_one_text_field_for_jsonl_and_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jsonl").write_text(json.dumps({"content": "from jsonl", "text": 3}) + "\n")
    pq.write_table(pa.table({"content": ["from parquet"]}), tmp_path / "c" / "b.parquet")
    got = [d.text for d in iter_documents(tmp_path / "c", text_field="content")]
    assert got == ["from jsonl", "from parquet"]
    with pytest.raises(BadDocument, match="'body' string.*--text-field"):
        list(iter_documents(tmp_path / "c", text_field="body"))


def test_failed_prepare_starts_over_once_the_input_is_fixed(tmp_path: Path) -> None:
    src = tmp_path / "c"
    src.mkdir()
    good = [json.dumps({"text": f"document number {i} " * (i % 7 + 1)}) for i in range(40)]
    (src / "a.jsonl").write_text("\n".join(good[:20]) + "\n")
    (src / "b.jsonl").write_text("\n".join(good[20:30] + ["{not json"] + good[30:]) + "\n")
    out = tmp_path / "out"
    with pytest.raises(BadDocument, match=r"b\.jsonl:11.*run the same command again"):
        prepare(src, out, shard_tokens=50, batch_chars=64)  # several segments were written before the bad line
    assert list(out.glob("*/train-*.bin"))
    (src / "b.jsonl").write_text("\n".join(good[20:]) + "\n")  # fixed: the file's size changed
    logs: list[str] = []
    meta = prepare(src, out, shard_tokens=50, batch_chars=64, log=logs.append)
    assert any("starting over" in m for m in logs)
    tok = Tokenizer.load("compact")
    texts = [json.loads(g)["text"] for g in good]
    d = TokenData.open(out)
    for split in ("train", "val"):
        want = [t for x in texts if is_validation(x, 0.1) == (split == "val") for t in tok.encode(x) + [tok.eos_id]]
        assert d.tokens("unk", split)[:].tolist() == want
    assert sum(s["documents"] for s in meta["shards"]) == 40
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*.bin")}
    assert on_disk == {s["path"] for s in meta["shards"]}  # nothing left from the failed attempt
    # other settings still refuse
    out2 = tmp_path / "out2"
    (src / "b.jsonl").write_text("{not json\n")
    with pytest.raises(BadDocument):
        prepare(src, out2)
    with pytest.raises(ValueError, match="val_fraction differ"):
        prepare(src, out2, val_fraction=0.2)


@pytest.mark.filterwarnings("ignore::growlm.data.prepare.DataWarning")
def test_long_line_is_encoded_in_windows_with_the_same_ids(tmp_path: Path, monkeypatch) -> None:
    """A document longer than the window is cut window by window; its ids equal encoding it whole."""
    monkeypatch.setattr(prep_mod, "BATCH_CHARS", 1000)  # the validation hash in blocks too
    monkeypatch.setattr(prep_mod, "WINDOW_CHARS", 3000)
    words = ["alpha", "béta", "γάμμα", "<|eos|>", "x" * 70, "12345", "  ", "\t"]
    text = " ".join(words[(i * 7) % len(words)] for i in range(6000))
    src = tmp_path / "c"
    src.mkdir()
    (src / "a.jsonl").write_text(json.dumps({"text": text}) + "\n")
    calls = []
    real = prep_mod.safe_chunks
    monkeypatch.setattr(prep_mod, "safe_chunks", lambda t, *a: calls.append(len(t)) or real(t, *a))
    meta = prepare(src, tmp_path / "out", chunk_chars=100, batch_chars=500)
    assert max(calls) < len(text) / 4  # never the whole document at once
    tok = Tokenizer.load("compact")
    split = "val" if is_validation(text, 0.1) else "train"
    assert TokenData.open(tmp_path / "out").tokens("unk", split)[:].tolist() == tok.encode(text) + [tok.eos_id]
    assert meta["languages"]["unk"][split]["documents"] == 1


@pytest.mark.filterwarnings("ignore::growlm.data.prepare.DataWarning")
def test_prepare_shows_progress(tmp_path: Path, capsys) -> None:
    src = tmp_path / "input.txt"
    src.write_text(_book(50), encoding="utf-8")
    prepare(src, tmp_path / "out", split=TextSplit(doc_chars=500), progress=True)
    err = capsys.readouterr().err
    assert "prepare" in err and "B/s" in err and "100%" in err
