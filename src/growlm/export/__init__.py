"""Leaving growlm: Hugging Face export (and the way back)."""
