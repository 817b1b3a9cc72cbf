"""Random-initialised model shapes for the benchmarks (no download), and a tokenizer to go with them.

The tokenizer is byte-level like the embedded model's, padded with unused tokens up to
the shape's real vocabulary size, so the LM head costs what it costs in the real model.
"""
from __future__ import annotations

from pathlib import Path

SHAPES = {
    # the CI smoke's: small enough to train a few steps on a CPU
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048, tie_word_embeddings=True),
    # Qwen2-0.5B and Qwen2-1.5B configurations
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen2-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                       rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
}


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    filler = vocab_size - len(vocab) - len(specials)
    for i in range(filler):
        vocab[f"<unused{i}>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    assert len(tok) == vocab_size, (len(tok), vocab_size)
    return tok


def build(shape: str, folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    cfg = SHAPES[shape]
    tok = build_tokenizer(cfg["vocab_size"])
    config = Qwen2Config(**cfg, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    if torch.cuda.is_available():  # the benchmark process must not keep GPU 0's memory from the jobs it launches
        torch.cuda.empty_cache()
    return folder


def matmul_params(config) -> int:
    """Parameters in matmuls: the LM head in, the input embedding out (PaLM/torchtitan MFU convention)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    d = h // heads
    attn = h * heads * d + 2 * h * kv * d + heads * d * h
    mlp = 3 * h * i
    return layers * (attn + mlp) + h * config.vocab_size
