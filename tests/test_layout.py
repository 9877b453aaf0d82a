"""The package's layout: imports point down only, no module-level import cycle, the public API is importable."""

from __future__ import annotations

import ast
from pathlib import Path

import growlm

SRC = Path(growlm.__file__).resolve().parent
# layers, bottom first; a module may import its own layer and any layer below it
LAYERS = [("util",), ("substrate",), ("model",), ("data",), ("evaluate",), ("training",), ("export", "experiments"),
          ("demo", "report"), ("commands",), ("cli",)]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The growlm modules ``path`` imports (``from growlm.model import lora`` imports ``growlm.model.lora``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    modules = _modules()
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("growlm"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            out.update(subs)
            if len(subs) < len(node.names):  # names defined by the module itself
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("growlm"))
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in SRC.rglob("*.py")}


def test_imports_point_down_only():
    wrong = []
    for mod, path in _modules().items():
        own = _layer(mod)
        if own is None:  # the package's face: re-exports (and lazily imports) the public API
            continue
        for target in _imports(path):
            layer = _layer(target)
            if layer is not None and layer in RANK and RANK[layer] > RANK[own]:
                wrong.append(f"{mod} -> {target}")
    assert not wrong, "imports that point up:\n" + "\n".join(sorted(wrong))


def test_nothing_below_the_cli_imports_commands():
    offenders = [mod for mod, path in _modules().items() if _layer(mod) not in ("commands", "cli")
                 and any(t.startswith("growlm.commands") for t in _imports(path))]
    assert offenders == []


def test_every_module_lives_in_a_layer():
    assert {_layer(m) for m in _modules()} - {None} <= set(RANK)


def test_no_module_level_import_cycle():
    mods = _modules()
    graph = {m: {t for t in _imports(p, top_level_only=True) if t in mods and t != m} for m, p in mods.items()}
    # a package's __init__ importing its own submodules is how a package shows its face: not a cycle
    for m in graph:
        graph[m] = {t for t in graph[m] if not (mods[m].name == "__init__" and t.startswith(m + "."))}
    seen, stack, cycles = set(), [], []

    def visit(m: str) -> None:
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for t in sorted(graph[m]):
            visit(t)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert cycles == []


def test_public_api():
    from growlm.model.composition import compose
    from growlm.model.saved import load_model
    from growlm.training.finetune import finetune
    from growlm.training.run import grow

    assert (growlm.grow, growlm.finetune, growlm.load_model, growlm.compose) == (grow, finetune, load_model, compose)
    for name in growlm.__all__:
        assert getattr(growlm, name) is not None
