"""``lmforge export`` and ``lmforge import``: checkpoints out to HF / GGUF, HF models in.

    lmforge export runs/demo --to hf --out exported/demo [--dtype bfloat16]
    lmforge export runs/demo --to gguf --out demo-f16.gguf [--outtype f16|f32|bf16] [--modelfile]
    lmforge import /models/Qwen3-0.6B --out ckpts/qwen3-0.6b          # then train.init_from=ckpts/qwen3-0.6b
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lmforge.cli_common import console
from lmforge.infer.cli import CheckpointArgument, _fail


def export_command(
    checkpoint: CheckpointArgument,
    to: Annotated[str, typer.Option("--to", help="hf: a clean Hugging Face model directory; gguf: one llama.cpp file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (hf) or .gguf file (gguf).", show_default=False)],
    dtype: Annotated[str, typer.Option("--dtype", help="hf: weight dtype float32, bfloat16 or float16.")] = "float32",
    outtype: Annotated[str, typer.Option("--outtype", help="gguf: f32, f16 or bf16 (norms, biases, routers stay f32).")] = "f16",
    max_shard_size: Annotated[Optional[str], typer.Option("--max-shard-size", help="hf: shard weights past this size, e.g. 2GB.",
                                                          show_default=False)] = None,
    modelfile: Annotated[bool, typer.Option("--modelfile/--no-modelfile", help="gguf: also write an Ollama Modelfile beside it.")] = False,
) -> None:
    """Export a checkpoint for other tools: `transformers`/vLLM (hf) or llama.cpp/Ollama (gguf)."""
    if to not in ("hf", "gguf"):
        _fail(f"--to must be hf or gguf; got {to!r}")
    try:
        if to == "hf":
            from lmforge.export.hf_dir import export_hf

            path = export_hf(checkpoint, out, dtype=dtype, max_shard_size=max_shard_size)
            console.print(f"wrote {path}/ (config.json, weights, generation_config.json, tokenizer, chat template)", markup=False, soft_wrap=True)
            console.print(f"  serve it: lmforge serve {path}    or    vllm serve {path}", markup=False, soft_wrap=True)
        else:
            from lmforge.export.gguf_file import export_gguf, ollama_modelfile

            if out.suffix != ".gguf":
                _fail(f"--out {out}: a GGUF file name ends in .gguf")
            path = export_gguf(checkpoint, out, outtype=outtype)
            size = path.stat().st_size / 1e6
            console.print(f"wrote {path} ({size:.1f} MB, {outtype})", markup=False, soft_wrap=True)
            if modelfile:
                (path.parent / "Modelfile").write_text(ollama_modelfile(path.name), encoding="utf-8")
                console.print(f"wrote {path.parent / 'Modelfile'}: ollama create NAME -f {path.parent / 'Modelfile'}", markup=False, soft_wrap=True)
            console.print(f"  run it: llama-cli -m {path} -cnv    or    llama-server -m {path}", markup=False, soft_wrap=True)
    except (FileNotFoundError, ValueError, OSError) as exc:
        _fail(str(exc))


def import_command(
    source: Annotated[str, typer.Argument(help="HF model directory (Llama, Qwen2, Qwen3, Qwen3-MoE, Qwen2-MoE) or hub id.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory to write.", show_default=False)],
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check logits against transformers on the source (default).")] = True,
) -> None:
    """Import an HF model as an lmforge checkpoint for continued pretraining or fine-tuning."""
    from lmforge.export.hf_dir import import_hf

    try:
        report = import_hf(source, out, verify=verify)
    except (FileNotFoundError, ValueError, OSError) as exc:
        _fail(str(exc))
    console.print(f"imported {source} as {report['architecture']} ({report['parameters']:,} parameters) into {out}/", markup=False, soft_wrap=True)
    if verify:
        console.print(f"  logits equal transformers': max |Δ| {report['max_abs_diff']:.2e} (scale {report['logit_scale']:.2f}), "
                      f"same argmax at {report['greedy_agreement']:.0%} of {report['positions']} positions", markup=False, soft_wrap=True)
    if not report["tokenizer"]:
        console.print("  note: no tokenizer files in the source; copy them in before training or chatting", markup=False)
    console.print(f"  continue pretraining: lmforge pretrain RECIPE --set train.init_from={out}", markup=False, soft_wrap=True)
    console.print(f"  fine-tune:            lmforge sft RECIPE --set train.init_from={out}", markup=False, soft_wrap=True)
