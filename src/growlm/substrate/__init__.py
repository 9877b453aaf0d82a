"""The frozen token substrate: vocabularies, the tokenizer, glyph and binary matrices."""

from growlm.substrate.substrate import Substrate, SubstrateMismatchError, SubstratePlan, SubstrateSpec
from growlm.substrate.tokenizer import Tokenizer
from growlm.substrate.vocab import PIECE_PATTERN, Vocabulary, available_vocabularies

__all__ = ["PIECE_PATTERN", "Substrate", "SubstrateMismatchError", "SubstratePlan", "SubstrateSpec", "Tokenizer",
           "Vocabulary", "available_vocabularies"]
