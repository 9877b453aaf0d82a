"""Every ```bash, ```python and ```toml block of README.md and docs/*.md runs, on tiny settings.

docs/results.md is generated (``growlm experiment report``) and not read. The blocks run in one shared working
directory, in document order (README first), so a command may use what an earlier one wrote (``runs/demo`` from
``growlm demo``, ``data/mine`` and ``runs/mine`` from the README's own-data quick start). A ``growlm`` command runs
in this process through ``growlm.cli.main`` after the substitutions of ``tiny()`` (the demo's recipes become tiny
ones, step counts and limits shrink); bash itself splits each command into words, so quoting and ``$'..'`` are
bash's. A command that cannot run here is listed in ``SKIP`` with the reason; an entry no block uses fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["README.md", "docs/own-data.md", "docs/substrates.md", "docs/growing.md", "docs/composing.md",
         "docs/generating.md", "docs/evaluating.md", "docs/exporting.md", "docs/lm_eval.md", "docs/experiments.md",
         "docs/scale.md", "docs/python-api.md"]

# A command whose text starts with one of these does not run here; the value says why.
SKIP = {
    "pip install": "installs packages from the network; .ci/run installs them before the tests",
    "python -m pytest": "the test suite itself",
    "torchrun": "several processes, GPUs or nodes; tests/training/test_parallel.py runs 2 gloo processes",
    "growlm corpus": "downloads registry packages (network)",
    "growlm prepare corpora/registry": "reads what `growlm corpus` downloads",
    "growlm prepare --out": "tokenises the whole embedded corpus (3.5M characters, 21 s on the loaded 2-core machine); "
                            "the demo recipes here read a prepared cut of it",
    "growlm compose-study paper-v1-compose": "the paper-size study: 16-layer experts, needs a GPU",
    "growlm experiment substrates --out": "a whole study with 3 seeds (minutes to hours on CPU)",
    "growlm experiment substrates --quick": "tens of seconds even quick; tests/experiments/test_substrates.py runs it",
    "OMP_NUM_THREADS=1 growlm experiment": "a study's seeds in two processes at cpu10x (hours); "
                                           "tests/experiments/test_framework.py and tests/test_cli.py split a toy "
                                           "study's seeds with --only-seed",
    "growlm experiment grown-vs-monolithic --scale gpu": "the GPU size: ~7.9e16 FLOPs on CUDA; "
                                                         "tests/experiments/test_scales.py sizes it without training",
    "python benchmarks/gpu_study.py": "one study at the GPU size on CUDA; tests/test_gpu_study.py runs it at --scale "
                                      "quick",
    "growlm compose-study compose-demo": "trains experts again; tests/test_demo.py runs compose-study on a tiny recipe",
    "growlm experiment report": "rewrites the checkout's docs/results.md; tests/experiments/test_results.py",
    "growlm export RUN OUT [": "a usage synopsis with placeholders, not a command",
    "export HF_": "sets environment variables for lm_eval",
    "lm_eval": "lm-evaluation-harness's own CLI; tests/evaluate/test_lm_eval_*.py run the model and tasks",
    "python -m growlm.evaluate.lm_eval_adapter": "lm-eval's CLI through growlm; tests/evaluate/test_lm_eval_adapter.py",
}


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def doc_blocks() -> list[Block]:
    """Every fenced bash/python/toml block of README.md and docs/*.md (not results.md), README first."""
    docs = ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md") if p.name != "results.md")
    docs.sort(key=lambda d: ORDER.index(d) if d in ORDER else len(ORDER))
    out = []
    for doc in docs:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for m in re.finditer(r"(?ms)^```(bash|python|toml)\n(.*?)^```", text):
            out.append(Block(doc, text[:m.start()].count("\n") + 1, m.group(1), m.group(2)))
    return out


def commands(block: Block) -> list[str]:
    """The block's commands: continuation lines joined, comment-only and blank lines dropped, ``&&`` split."""
    joined = re.sub(r"\\\n\s*", " ", block.text)
    cmds = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            cmds += [c.strip() for c in line.split(" && ")]
    return cmds


# Documented to fail, with the reason the text gives: (doc, command start) -> a word the error must hold.
EXPECT_ERROR: dict[tuple[str, str], str] = {}


def skip_reason(cmd: str) -> str | None:
    return next((why for prefix, why in SKIP.items() if cmd.startswith(prefix)), None)


def bash_words(cmd: str) -> list[str]:
    """The words bash makes of one command (quotes, ``$'..'`` and comments as bash reads them)."""
    r = subprocess.run(["bash", "-c", "printf '%s\\0' " + cmd], capture_output=True, check=True)
    return r.stdout.decode().split("\0")[:-1]


TINY_MODEL = """[model]
preset = "{preset}"
d_model = 32
n_head = 2
n_layer = 0
block_size = 32
[substrate]
kind = "glyph"
vocab = "compact"
[data]
path = "{data}"
[train]
batch_size = 2
seq_len = 16
warmup_steps = 1
val_tokens = 64
ckpt_every = 0
[[stages]]
name = "grow-1"
add = 1
steps = 2
[[stages]]
name = "lora-1"
train_newest = 0
lora = {{ rank = 2, alpha = 4 }}
steps = 1
[[stages]]
name = "grow-2"
add = 1
steps = 1
"""


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, tiny_corpus, tiny_data) -> Path:
    """The directory the documented commands run in, with the files they name and the tiny recipes."""
    ws = tmp_path_factory.mktemp("docs")
    (ws / "tiny-grow.toml").write_text('name = "tiny-grow"\n' + TINY_MODEL.format(preset="paper", data=tiny_data))
    (ws / "tiny-expert.toml").write_text('name = "tiny-expert"\n' + TINY_MODEL.format(preset="paper", data=tiny_data)
                                         .split("[[stages]]")[0] + '[[stages]]\nname = "grow-1"\nadd = 1\nsteps = 1\n')
    (ws / "tiny-compose.toml").write_text(f'''name = "tiny-compose"
expert_recipe = "{ws / 'tiny-expert.toml'}"
[experts]
en_ru = {{ en = 1, ru = 1 }}
en_zh = {{ en = 1, zh = 1 }}
[compose]
methods = ["average", "adapter"]
finetune = ["adapter"]
finetune_steps = 1
rank = 2
''')
    # the README's own data: one text file per document, a folder per language
    for lang in ("en", "ru"):
        (ws / "my_text" / lang).mkdir(parents=True)
        for i, line in enumerate((tiny_corpus / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()):
            (ws / "my_text" / lang / f"{i:02d}.txt").write_text(json.loads(line)["text"], encoding="utf-8")
    # own-data.md's inputs: JSONL with a "content" field (and one bad line, for --skip-bad), one long .txt book
    (ws / "my_corpus").mkdir()
    rows = [json.dumps({"content": json.loads(x)["text"]}, ensure_ascii=False)
            for x in (tiny_corpus / "en.jsonl").read_text(encoding="utf-8").splitlines()]
    (ws / "my_corpus" / "en.jsonl").write_text("\n".join(rows + ["{not json"]) + "\n", encoding="utf-8")
    (ws / "input.txt").write_text("\n\n".join(json.loads(x)["text"] for x in (tiny_corpus / "en.jsonl").read_text(
        encoding="utf-8").splitlines()), encoding="utf-8")
    (ws / "prompt.txt").write_text("Once upon a time", encoding="utf-8")
    return ws


def tiny(words: list[str], ws: Path, data: Path) -> list[str]:
    """A documented growlm command at tiny settings: the same verb and options, the demo's recipes tiny ones."""
    w = list(words[1:])
    verb = w[0]
    recipes = {"demo": str(ws / "tiny-grow.toml"), "compose-demo": str(ws / "tiny-compose.toml")}

    def setopt(name: str, value: str) -> None:
        if name in w:
            w[w.index(name) + 1] = value
        else:
            w.extend([name, value])

    if verb == "demo":
        w += ["--recipe", recipes["demo"], "--compose-recipe", recipes["compose-demo"]]
    elif verb in ("grow", "plan", "compose-study") and len(w) > 1 and w[1] in recipes:
        w[1] = recipes[w[1]]
    if verb in ("grow", "plan") and len(w) > 1 and w[1] == "mine.toml":  # init-recipe copied the demo's recipe
        sets = {"model.d_model": "32", "model.n_head": "2", "model.block_size": "32", "train.batch_size": "2",
                "train.seq_len": "16", "train.val_tokens": "64", **{f"stages.{i}.steps": "1" for i in range(5)}}
        for i, x in enumerate(w):
            if x == "--set" and w[i + 1].split("=")[0] in sets:
                key = w[i + 1].split("=")[0]
                w[i + 1] = f"{key}={sets.pop(key)}"
        for key, value in sets.items():
            w += ["--set", f"{key}={value}"]
    if verb == "finetune":
        setopt("--steps", "2")
        setopt("--data", str(data))
        setopt("--batch-size", "2")
        setopt("--seq-len", "16")
        setopt("--val-tokens", "64")
    if verb == "eval":
        setopt("--limit", "2")
        if "--data" not in w:  # ppl on the tiny prepared corpus, not the whole embedded one tokenised
            w += ["--data", str(data)]
        if "paper" in w:
            setopt("--runs", "1")
    if verb == "generate":
        setopt("--max-new-tokens", "4")
    if verb in ("demo", "grow", "finetune", "compose-study", "prepare"):
        w.append("--no-progress")
    return w


def run_growlm(argv: list[str], stdin: str | None = None) -> tuple[int, str]:
    from growlm.cli import main

    out = io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin) if stdin is not None else old_stdin
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdin = old_stdin
    return rc, out.getvalue()


BLOCKS = doc_blocks()


def test_every_doc_has_its_blocks_found():
    docs = {b.doc for b in BLOCKS}
    assert "README.md" in docs and "docs/growing.md" in docs and "docs/python-api.md" in docs
    assert all(b.text.strip() for b in BLOCKS)


def test_every_skip_entry_is_used():
    cmds = [c for b in BLOCKS if b.lang == "bash" for c in commands(b)]
    unused = [p for p in SKIP if not any(c.startswith(p) for c in cmds)]
    assert not unused, f"SKIP entries no documented command uses: {unused}"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b.where}-{b.lang}")
def test_doc_block_runs(block, workspace, tiny_data, monkeypatch):
    """Each page runs in a folder of its own (names such as data/mine recur), the README's runs/demo linked in."""
    cwd = workspace if block.doc == "README.md" else workspace / block.doc.replace("/", "_")
    if not cwd.exists():
        cwd.mkdir()
        for name in ("my_text", "my_corpus", "input.txt", "prompt.txt"):
            (cwd / name).symlink_to(workspace / name)
        # what other pages make: the README's demo run and data, composing.md's composed model
        for name, source in [("runs/demo", workspace), ("data/mine", workspace),
                             ("runs/moe", workspace / "docs_composing.md")]:
            if (source / name).exists() and block.doc != "docs/own-data.md":  # that page makes its own data/mine
                (cwd / name).parent.mkdir(exist_ok=True)
                (cwd / name).symlink_to(source / name)
    monkeypatch.chdir(cwd)
    if block.lang == "toml":
        check_toml(block, tiny_data)
    elif block.lang == "python":
        src = block.text.replace('growlm.grow("demo"', f'growlm.grow("{workspace / "tiny-grow.toml"}"')
        src = src.replace("runs/my-demo", "runs/my-api-demo")
        # OUT: the export directory the pages name; exporting.md's command writes it
        exec(compile(src, block.where, "exec"),
             {"__name__": "__doc_block__", "OUT": str(workspace / "docs_exporting.md" / "hf" / "demo")})
    else:
        for cmd in commands(block):
            if skip_reason(cmd):
                continue
            stdin = None
            if " | " in cmd:
                left, cmd = cmd.split(" | ", 1)
                assert left.startswith("echo "), f"{block.where}: only `echo ... | growlm` pipes are run: {cmd}"
                stdin = bash_words(left)[1] + "\n"
            words = bash_words(cmd)
            assert words[0] == "growlm", f"{block.where}: no rule runs {cmd!r}: run it or list it in SKIP"
            argv = tiny(words, workspace, tiny_data)
            rc, out = run_growlm(argv, stdin)
            expected = next((word for (doc, start), word in EXPECT_ERROR.items()
                             if doc == block.doc and cmd.startswith(start)), None)
            if expected:
                assert rc != 0 and expected in out, f"{block.where}: `{cmd}` should fail ({expected}):\n{out[-2000:]}"
                continue
            assert rc == 0, f"{block.where}: `{cmd}` (run as growlm {' '.join(argv)}) failed:\n{out[-3000:]}"


def check_toml(block: Block, data: Path) -> None:
    """A recipe fragment is read by the recipe parser, merged into the tiny recipe."""
    from growlm.training.plan import Recipe

    frag = tomllib.loads(block.text)
    raw = tomllib.loads(TINY_MODEL.format(preset="paper", data=data))
    raw["name"] = "doc"
    for key, value in frag.items():
        if key == "stages":
            raw["stages"] = [dict(raw["stages"][0])] + value  # one fresh block first: a LoRA stage needs one
        elif isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    Recipe.from_dict(raw)


def test_commands_are_split_as_bash_splits_them():
    assert bash_words("growlm generate runs/moe --stop $'\\n\\n'   # a comment") == [
        "growlm", "generate", "runs/moe", "--stop", "\n\n"]
