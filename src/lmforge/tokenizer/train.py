"""Byte-level BPE tokenizer training (recipe section ``tokenizer``).

Trains a tokenizer with Hugging Face ``tokenizers`` and writes a directory that
``transformers.AutoTokenizer.from_pretrained(dir)`` loads as is::

    from lmforge.tokenizer.train import TokenizerConfig, train_tokenizer, load_tokenizer
    out = train_tokenizer(["hello world", "你好，世界"] * 100, "runs/tok", TokenizerConfig(vocab_size=400))
    tok = load_tokenizer(out)                 # the fast ``tokenizers.Tokenizer``, for bulk encoding
    tok.encode("12345").tokens                # ['1', '2', '3', '4', '5']: digits split one per token

Choices, and why:

* **Qwen2's pre-tokenizer, exactly**: NFC normalization, the Qwen2 split regex (digits one per
  token, CJK runs kept together, punctuation runs separate), then byte-level mapping without a
  prefix space. Splitting digits helps small models learn arithmetic, and using a pre-tokenizer
  llama.cpp knows (``qwen2``) means a GGUF export tokenizes our text exactly as we do.
* **The full 256-byte initial alphabet**, so any string (emoji, rare CJK, binary junk) encodes
  and decodes losslessly; there is no unknown token. (Losslessly up to NFC: like Qwen2, text is
  NFC-normalized first, so ``decode(encode(x)) == unicodedata.normalize("NFC", x)``.)
* **Special tokens first**: ``<|endoftext|>`` (0: end of document, also padding),
  ``<|im_start|>`` (1), ``<|im_end|>`` (2), then ``<|reserved_0|>``... kept free so later stages
  (tools, thinking) can add tokens without resizing the embedding.
* **A ChatML chat template** (Qwen2 style, without an injected default system prompt) in
  ``tokenizer_config.json``, so SFT, chat and serving all render conversations the same way.

The directory is written atomically (a temporary sibling, then rename) together with a
``lmforge_tokenizer.json`` sidecar: the config used, how much text it saw, and the sha256 of
``tokenizer.json``, which token shards record so a mismatched tokenizer is caught early.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from lmforge.io import replace_dir, write_json_atomic

if TYPE_CHECKING:  # keep `import lmforge.tokenizer.train` light: recipes import this module
    from tokenizers import Tokenizer


@dataclass
class TokenizerConfig:
    vocab_size: int = 6400
    min_frequency: int = 2
    num_reserved_tokens: int = 16  # <|reserved_0|> ... kept free for later special tokens
    max_train_chars: int = 0  # 0 = train on everything; else stop reading after this many characters
    model_max_length: int = 32768  # written to tokenizer_config.json; transformers warns past it


# Qwen2's pre-tokenization regex (transformers/models/qwen2/tokenization_qwen2.py, and
# llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2): `\p{N}` alone means one token per digit.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# ChatML as Qwen2 renders it, minus the default system prompt Qwen injects: a tiny model should
# not spend context (or SFT signal) on a sentence it sees in every example.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

SIDECAR = "lmforge_tokenizer.json"


def special_tokens(num_reserved: int) -> list[str]:
    """The special tokens in id order: eos, the two ChatML markers, then reserved ones."""
    return [EOS_TOKEN, IM_START, IM_END] + [f"<|reserved_{i}|>" for i in range(num_reserved)]


def build_empty_tokenizer() -> "Tokenizer":
    """An untrained BPE tokenizer wired exactly like Qwen2's (normalizer, pre-tokenizer, decoder)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # No post-processor: documents get eos appended explicitly where they are tokenized.
    return tok


class _TextCounter:
    """Wraps the training iterator to count what the trainer actually saw (and cap it)."""

    def __init__(self, texts: Iterable[str], max_chars: int):
        self.texts, self.max_chars = texts, max_chars
        self.chars = self.bytes = self.documents = 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            last = bool(self.max_chars) and self.chars + len(text) >= self.max_chars
            if last:
                text = text[: self.max_chars - self.chars]
            if text:
                self.chars += len(text)
                self.bytes += len(text.encode("utf-8"))
                self.documents += 1
                yield text
            if last:
                return


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    cfg: TokenizerConfig | None = None,
    *,
    show_progress: bool = True,
) -> Path:
    """Train a byte-level BPE tokenizer on ``texts`` and write an HF tokenizer directory.

    ``texts`` is consumed once, lazily (a generator over a corpus larger than RAM is fine: the
    trainer keeps word counts, not text). Returns ``out_dir``. An existing ``out_dir`` is replaced
    only after the new one is complete.
    """
    from tokenizers import pre_tokenizers, trainers

    cfg = cfg or TokenizerConfig()
    specials = special_tokens(cfg.num_reserved_tokens)
    min_vocab = len(specials) + 256
    if cfg.vocab_size < min_vocab:
        raise ValueError(
            f"tokenizer.vocab_size={cfg.vocab_size} is too small: the {len(specials)} special tokens "
            f"and 256 byte tokens alone need {min_vocab}"
        )
    if cfg.vocab_size > (1 << 32) - 1:
        raise ValueError(f"tokenizer.vocab_size={cfg.vocab_size} does not fit uint32 token ids")

    tok = build_empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=specials,  # given first, so they take ids 0..len(specials)-1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    counter = _TextCounter(texts, cfg.max_train_chars)
    tok.train_from_iterator(counter, trainer=trainer)
    if counter.chars == 0:
        raise ValueError("no training text: every input document was empty")
    for i, token in enumerate(specials):  # the contract other modules rely on
        assert tok.token_to_id(token) == i, f"special token {token} got id {tok.token_to_id(token)}"

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tok.save(str(tmp / "tokenizer.json"))
        _write_hf_configs(tmp, cfg, specials)
        sidecar = {
            "format": "lmforge-tokenizer/1",
            "config": asdict(cfg),
            "vocab_size": tok.get_vocab_size(),
            "special_tokens": {t: i for i, t in enumerate(specials)},
            "eos_id": 0,
            "pretokenizer": "qwen2",
            "train_documents": counter.documents,
            "train_chars": counter.chars,
            "train_bytes": counter.bytes,
            "tokenizer_sha256": _sha256_file(tmp / "tokenizer.json"),
        }
        write_json_atomic(tmp / SIDECAR, sidecar)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_hf_configs(directory: Path, cfg: TokenizerConfig, specials: list[str]) -> None:
    # `PreTrainedTokenizerFast` (an alias of TokenizersBackend in transformers 5) loads
    # tokenizer.json as is. Naming `Qwen2Tokenizer` would make transformers 5 rebuild the
    # pipeline in Python, and `LlamaTokenizer` would force a Metaspace pre-tokenizer.
    added = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for i, t in enumerate(specials)
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,  # like Qwen2: documents are separated by eos only
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END],
        "model_max_length": cfg.model_max_length,
        "clean_up_tokenization_spaces": False,  # it would corrupt roundtrips (" ." -> ".")
        "add_prefix_space": False,
        "split_special_tokens": False,
        "errors": "replace",
        "chat_template": CHAT_TEMPLATE,
    }
    write_json_atomic(directory / "tokenizer_config.json", tokenizer_config)
    write_json_atomic(
        directory / "special_tokens_map.json",
        {"eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "additional_special_tokens": [IM_START, IM_END]},
    )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tokenizer_json(directory: str | os.PathLike) -> Path:
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory}: no tokenizer.json here; train one with `lmforge tokenizer train ... --out {directory}`"
        )
    return path


def load_tokenizer(directory: str | os.PathLike) -> "Tokenizer":
    """The fast ``tokenizers.Tokenizer`` in ``directory`` (bulk encoding without transformers)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(_tokenizer_json(directory)))


def tokenizer_sha256(directory: str | os.PathLike) -> str:
    """sha256 of ``directory/tokenizer.json``: identifies the exact vocabulary and merges."""
    return _sha256_file(_tokenizer_json(directory))
