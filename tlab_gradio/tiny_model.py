"""The embedded default model: a tiny Llama built from a config, with a byte-level
tokenizer built in code. Nothing is downloaded; it is cached in the workspace.

It exists so the app, the tests and a first-time user can train offline on a CPU
in seconds. It learns (the loss falls) but knows nothing.
"""
from __future__ import annotations

from pathlib import Path

from . import settings
from .atomic_folder import build_once

NAME = "tlab-tiny-llama"
ARCHITECTURE = "LlamaForCausalLM"
# ChatML with generation markers, so TRL's assistant-only loss works on it.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|im_start|>assistant\n{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{%- else -%}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=2048)


VOCAB_SIZE = 256 + 5  # every byte, plus bos/eos/pad and the two chat markers


def config_dict() -> dict:
    """The embedded model's config.json as it will be, without building it (for checks and estimates)."""
    return {"architectures": [ARCHITECTURE], "vocab_size": VOCAB_SIZE, "tie_word_embeddings": True, **SHAPE}


def default_path() -> Path:
    return settings.home() / "models" / NAME


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Every byte is a token (GPT-2's printable byte alphabet), no merges: any text
    # encodes, and no training data is needed to build it.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=SHAPE["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **SHAPE,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # A chat turn ends at <|im_end|>: generation stops there (as Qwen's ChatML models do), not at max length
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def ensure(path: Path | None = None) -> Path:
    """Build the model once; concurrent callers (ranks, jobs) are safe (atomic_folder.build_once)."""
    return build_once(Path(path or default_path()), build)


if __name__ == "__main__":
    import sys

    print(ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
