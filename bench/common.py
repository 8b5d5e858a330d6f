"""What the bench scripts (and the tests that use the same shapes) share: the Qwen2.5-1.5B architecture, a
tiny model of the same family, and building random-weight models of them. No weights are downloaded.

Bench scripts put the repository root on sys.path and import `from bench.common import ...` (tests too);
one bench script reuses another's builders as `from bench import sft`.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Qwen2.5-1.5B (-Instruct), as its config.json on the hub states them.
QWEN25_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
# The same family at toy size, for CPU dry runs of the harnesses (scripts set vocab_size to their tokenizer's).
TINY_QWEN2 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=2048, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                  tie_word_embeddings=True)


def random_qwen2(dims: dict, device: str, dtype, **config):
    """A random-weight (seed 0) Qwen2 causal LM of `dims`, built on `device` and cast to `dtype`;
    `config` adds or overrides Qwen2Config fields (token ids, vocab size, attention implementation)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return Qwen2ForCausalLM(Qwen2Config(**{**dims, **config})).to(dtype)


def save_random_qwen25_15b(tokenizer_dir: Path, out: Path) -> None:
    """Random-weight Qwen2.5-1.5B in bf16 on CUDA, saved as safetensors next to the tokenizer of
    `tokenizer_dir` (its special token ids; the 151,936-row embedding holds any Qwen2 vocabulary): a local model directory for the stages."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = random_qwen2(QWEN25_15B, "cuda", torch.bfloat16, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
