"""growlm: grow language models layer by layer on a frozen token substrate, and compose them."""

from growlm.compose import ComposedLM  # imported here so every model kind is registered for load_model
from growlm.model import Config, GrowLM
from growlm.substrate import Substrate, SubstrateMismatchError, Tokenizer, Vocabulary

__version__ = "0.1.0"
__all__ = ["ComposedLM", "Config", "GrowLM", "Substrate", "SubstrateMismatchError", "Tokenizer", "Vocabulary",
           "__version__"]
