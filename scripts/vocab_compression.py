"""Characters per token of shipped vocabularies on the embedded default corpus, per language (prints JSON).

    PYTHONPATH=src python scripts/vocab_compression.py bvv241-2-3 bmp65k
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from growlm.data.documents import default_corpus_dir, load_documents  # noqa: E402
from growlm.substrate import Tokenizer  # noqa: E402
from growlm.util.provenance import git_commit  # noqa: E402


def measure(name: str, docs: list[tuple[str, str]]) -> dict:
    tok = Tokenizer.load(name)
    per: dict[str, list[int]] = {}
    for (lang, text), ids in zip(docs, tok.encode_batch([t for _, t in docs])):
        c = per.setdefault(lang, [0, 0, 0])
        c[0] += len(text)
        c[1] += len(ids)
        c[2] += sum(tok.vocab.tokens[i].kind == "byte" for i in ids)
    per["all"] = [sum(v[k] for v in per.values()) for k in range(3)]
    return {lang: {"characters": c, "tokens": t, "byte_tokens": b, "chars_per_token": round(c / t, 4)}
            for lang, (c, t, b) in per.items()}


def main() -> None:
    names = sys.argv[1:] or ["bvv241-2-3", "bmp65k"]
    docs = [(lang or "unk", text) for lang, text in load_documents(default_corpus_dir())]
    commit, _ = git_commit(Path(__file__).resolve().parents[1])
    print(json.dumps({"commit": commit, "machine": platform.platform(), "corpus": "embedded default corpus",
                      "vocabularies": {n: measure(n, docs) for n in names}}, indent=1))


if __name__ == "__main__":
    main()
