"""lm-evaluation-harness model ``growlm``: ``lm_eval --model growlm --model_args pretrained=RUN --tasks ...``.

lm-eval 0.4.13 finds models only in its own registry (it does not read the ``lm_eval.models`` entry point): the
``growlm-lm-eval.pth`` that growlm installs registers ``growlm`` whenever lm-eval loads its models (see
``_growlm_lm_eval``), and importing this module registers it too. ``python -m growlm.evaluate.lm_eval_adapter ARGS``
is the ``lm_eval`` command line with growlm's tasks (``growlm.evaluate.lm_eval_tasks``) on its include path.
"""

from __future__ import annotations

import sys
import warnings

import torch
from lm_eval.api.model import LM
from tqdm.auto import tqdm

from _growlm_lm_eval import register
from growlm.evaluate.lm_eval_tasks import TASKS_DIR
from growlm.evaluate.scorer import Scorer
from growlm.model.saved import load_model, read_model_meta, resolve_model_dir
from growlm.substrate import Tokenizer


def _split_space(context: str, continuation: str) -> tuple[str, str]:
    """Move trailing spaces of the context onto the continuation (as lm-eval's own models do)."""
    n = len(context) - len(context.rstrip(" "))
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


class GrowLMEval(LM):
    """A growlm model or run directory (``pretrained=`` as lm-eval's hf model names it, or ``path=``) as an lm-eval
    ``LM``."""

    def __init__(self, path: str | None = None, batch_size: int | str = 64, max_length: int | None = None,
                 device: str | None = None, model=None, tokenizer=None, pretrained: str | None = None, **kwargs):
        super().__init__()
        if path and pretrained and path != pretrained:
            raise ValueError(f"model_args name two models: path={path} and pretrained={pretrained}; give one")
        path = path or pretrained
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(f"device {device!r} requested but CUDA is unavailable; using cpu", stacklevel=2)
            device = "cpu"
        if model is None:
            if not path:
                raise ValueError("growlm needs model_args pretrained=RUN_OR_MODEL_DIR "
                                 "(e.g. --model_args pretrained=runs/demo/grow)")
            d = resolve_model_dir(path)
            model = load_model(d, map_location=device or "cpu")
            tokenizer = Tokenizer.load(read_model_meta(d)["substrate"]["vocab"])
        if tokenizer is None:
            raise ValueError("pass tokenizer= together with model=")
        bs = 64 if str(batch_size).startswith("auto") else int(batch_size)
        self.scorer = Scorer(model, tokenizer, bs, int(max_length) if max_length else None, progress=True)
        self.tok = tokenizer

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = []
        for req in requests:
            ctx, cont = _split_space(*req.args[:2])
            pairs.append((self.tok.encode(ctx) if ctx else [], self.tok.encode(cont)))
        return self.scorer.loglikelihood(pairs, desc="lm-eval loglikelihood")

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for req in requests:
            ids = [self.tok.eos_id] + self.tok.encode(req.args[0])
            out.append(-sum(n for n, _ in self.scorer.rolling_nll(ids, desc="lm-eval rolling")))
        return out

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in tqdm(requests, desc="lm-eval generate_until", leave=False):
            context, kw = req.args[0], dict(req.args[1] if len(req.args) > 1 else {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.pop("max_gen_toks", 256))
            temp = float(kw.pop("temperature", 0.0)) if kw.pop("do_sample", False) else 0.0
            gen = torch.Generator().manual_seed(int(kw.pop("seed", 0)))

            def stop(new: list[int], until=until) -> bool:
                text = self.tok.decode(new)
                return any(u in text for u in until) or new[-1] == self.tok.eos_id

            text = self.tok.decode(self.scorer.generate(self.tok.encode(context), max_new, temp, gen, stop),
                                   skip_special_tokens=True)
            for u in until:
                text = text.split(u, 1)[0]
            out.append(text)
        return out


register()  # a lazy entry naming this module: the same class whether or not the .pth registered it first


def main(argv: list[str] | None = None) -> None:
    """The ``lm_eval`` command line with ``growlm`` registered and growlm's tasks included (unless
    ``--include_path`` names another folder)."""
    from lm_eval.__main__ import cli_evaluate  # deferred: lm-eval's command-line module, for this entry point only

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in args) and len(args) > 1:
        args += ["--include_path", str(TASKS_DIR)]
    sys.argv = [sys.argv[0], *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
