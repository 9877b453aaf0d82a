"""growlm: grow language models layer by layer on a frozen token substrate, and compose them."""

from growlm.model import Config, GrowLM
from growlm.substrate import Substrate, SubstrateMismatchError, Tokenizer, Vocabulary

__version__ = "0.1.0"
__all__ = ["Config", "GrowLM", "Substrate", "SubstrateMismatchError", "Tokenizer", "Vocabulary", "__version__"]
