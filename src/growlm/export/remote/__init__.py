"""growlm's own Hugging Face modelling files, copied verbatim into an export that no stock architecture holds.

They import only torch and transformers (never growlm), so ``AutoModelForCausalLM.from_pretrained(OUT,
trust_remote_code=True)`` runs the model anywhere.
"""
