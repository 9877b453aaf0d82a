"""``growlm export RUN OUT --format hf``: a Hugging Face checkpoint that ``transformers`` loads without growlm."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from growlm.export.hf import export_hf, verify_export

    if args.format != "hf":
        raise ValueError(f"unknown export format {args.format!r}; valid: hf")
    out = export_hf(args.run, args.out, dtype=args.dtype, force=args.force, arch=args.arch)
    info = json.loads((out / "growlm_export.json").read_text())
    report = {"out": str(out), "format": info["format"], "architecture": info["architecture"],
              "trust_remote_code": info["trust_remote_code"], "why": info["reason"], "depth": info["depth"],
              "dtype": args.dtype}
    if info.get("method"):
        report["method"] = info["method"]
    if args.verify:
        report["max_abs_logit_diff"] = verify_export(args.run, out)
    print(json.dumps(report, indent=1))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model or composed model as a Hugging Face checkpoint: a stock "
                                      "architecture where one holds it exactly (llama block -> LlamaForCausalLM, "
                                      "paper block without head bias -> GPTNeoXForCausalLM), else growlm's own "
                                      "modelling file (trust_remote_code=True)")
    p.add_argument("run", metavar="RUN", help="run directory (its final model), model or composed-model directory")
    p.add_argument("out", metavar="OUT", help="output directory (config.json, model.safetensors, tokenizer "
                   "files): new, empty or an earlier export")
    p.add_argument("--force", action="store_true",
                   help="write into an existing directory holding other files: the export's own files are "
                        "written (replacing namesakes), nothing else is touched")
    p.add_argument("--format", default="hf", choices=["hf"], help="export format (only hf for now)")
    p.add_argument("--arch", default="auto", choices=["auto", "stock", "growlm"],
                   help="auto: a stock architecture where one holds the model exactly, else growlm's modelling "
                        "file; stock: a stock architecture, for the paper block with an LM-head bias (every shipped "
                        "recipe) a GPTNeoXForCausalLM widened by extra channels that carry the bias (for vLLM and "
                        "llama.cpp; logits equal up to float rounding), else refuse; growlm: always growlm's file")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written weights")
    p.add_argument("--verify", action="store_true",
                   help="load the export with transformers and print the max |logit difference| to growlm")
    p.set_defaults(func=run)
