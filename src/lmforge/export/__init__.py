"""Interop: checkpoints out as HF directories or GGUF files, HF models in as checkpoints.

    lmforge export CKPT --to hf --out DIR            # hf_dir.export_hf
    lmforge export CKPT --to gguf --out FILE.gguf    # gguf_file.export_gguf
    lmforge import HF_DIR --out CKPT                 # hf_dir.import_hf (logits checked)
"""
