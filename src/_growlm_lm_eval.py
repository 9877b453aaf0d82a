"""Makes ``lm_eval --model growlm`` work: adds growlm's model to lm-evaluation-harness's registry.

lm-eval (0.4.13) looks models up only in its own registry, which ``lm_eval.models`` fills on first use; it reads no
entry point. growlm installs ``growlm-lm-eval.pth`` next to this module, and Python runs ``install()`` at start-up:
one finder on ``sys.meta_path`` that imports nothing (torch, lm-eval and growlm stay unloaded) and, when a program
imports ``lm_eval.models``, registers ``growlm`` as a lazy entry, so the adapter loads only when the model is used.
Kept outside the ``growlm`` package so that start-up never imports it.
"""

import sys

ADAPTER = "growlm.evaluate.lm_eval_adapter:GrowLMEval"
WATCHED = "lm_eval.models"


def register() -> None:
    """Register ``growlm`` in lm-eval's model registry (after lm-eval's own models, which it loads only while the
    registry is empty)."""
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    if "growlm" not in model_registry:
        model_registry.register("growlm", target=ADAPTER)


class _RegisterAfterImport:
    """Meta-path finder: lets ``lm_eval.models`` load as usual, then calls ``register()``."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != WATCHED:
            return None
        import importlib.util  # here, not at start-up

        sys.meta_path.remove(self)  # one shot, and the lookup below must not find this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module, run=run) -> None:
            run(module)
            try:
                register()
            except Exception as e:  # an lm-eval whose registry moved must still run its own models
                print(f"growlm: could not register the lm-eval model 'growlm': {e!r}", file=sys.stderr)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Watch for ``lm_eval.models`` (run by ``growlm-lm-eval.pth`` at interpreter start-up)."""
    if WATCHED in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
