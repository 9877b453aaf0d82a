"""The language model: the model itself, LoRA, the chunked head loss, model directories, composition, sampling."""

from growlm.model.model import Config, GrowLM

__all__ = ["Config", "GrowLM"]
