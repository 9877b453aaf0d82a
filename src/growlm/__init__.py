"""growlm: grow language models layer by layer on a frozen token substrate, and compose them."""

from importlib import import_module

from growlm.export import hf_load  # noqa: F401  (registers export directories with load_model: the way back)
from growlm.model import Config, GrowLM
from growlm.model.composition import ComposedLM  # imported here so every model kind is registered for load_model
from growlm.substrate import Substrate, SubstrateMismatchError, Tokenizer, Vocabulary

__version__ = "0.1.0"

# the entry points of the layers above the model, imported when first used (``import growlm`` stays light)
_LAZY = {"grow": "growlm.training.run", "finetune": "growlm.training.finetune", "load_model": "growlm.model.saved",
         "save_model": "growlm.model.saved", "compose": "growlm.model.composition", "Recipe": "growlm.training.plan"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'growlm' has no attribute {name!r}")


__all__ = ["ComposedLM", "Config", "GrowLM", "Recipe", "Substrate", "SubstrateMismatchError", "Tokenizer",
           "Vocabulary", "__version__", "compose", "finetune", "grow", "load_model", "save_model"]
