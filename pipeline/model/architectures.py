"""The paper-scale architecture as data, and random-initialised models of it.

``GRITLM_7B`` is GritLM-7B's decoder: Mistral-7B-v0.1's shape, which GritLM keeps (32 layers, width 4096, 32 query
heads sharing 8 key/value heads, a SiLU MLP of 14336, a 32,000-token vocabulary, RoPE theta 10,000, a 4,096-token
sliding window, untied embeddings). ``miniature`` shrinks it to a few layers and a small width and keeps every
setting that selects a code path, so the test suite can run the paper's profile through the whole DAG on a CPU;
``bench/paper_shape.py`` builds it at full size to time one training step. ``random_mistral`` builds either with
random weights in a given dtype; ``random_model`` writes one as a local model folder (safetensors) with a given
tokenizer, the vocabulary set to the tokenizer's.
"""

from __future__ import annotations

from pathlib import Path

GRITLM_7B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "vocab_size": 32000,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
}


def miniature(config: dict, layers: int = 2, hidden: int = 128, heads: int = 4) -> dict:
    """``config`` at ``layers`` decoder layers, width ``hidden`` and ``heads`` query heads: the key/value heads keep
    the grouped-query ratio, the MLP its width ratio (a multiple of 64, 4-bit blocks), the rest stays."""
    ratio = config["num_attention_heads"] // config["num_key_value_heads"]
    if heads % ratio or hidden % heads:
        raise ValueError(f"{heads} heads of width {hidden}: expected a multiple of the GQA ratio {ratio} dividing it")
    mlp = round(hidden * config["intermediate_size"] / config["hidden_size"] / 64) * 64
    return config | {"num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
                     "num_key_value_heads": heads // ratio, "head_dim": hidden // heads, "intermediate_size": mlp}


def random_mistral(config: dict, dtype: str = "float32", device: str = "cpu", seed: int = 0):
    """A ``MistralForCausalLM`` of ``config`` (``MistralConfig``'s keys) with seeded random weights, built in
    ``dtype`` directly on ``device`` (no float32 copy of a 7B model on the way)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            return MistralForCausalLM(MistralConfig(**config))
    finally:
        torch.set_default_dtype(default)


def random_model(config: dict, tokenizer_dir: str | Path, out_dir: str | Path, seed: int = 0,
                 dtype: str = "float32") -> Path:
    """``random_mistral`` of ``config`` with ``tokenizer_dir``'s vocabulary and special tokens, in ``dtype``
    (bfloat16 for the full size: half the memory and disk), saved with that tokenizer as a model folder
    ``model.path`` can name."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = random_mistral(config | {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
                           dtype, seed=seed)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
