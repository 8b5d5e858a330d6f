"""Batched generation for evaluation and GRPO rollouts: a paged-KV, continuous-batching engine.

    completions.py    text in, text out (GenerationSettings, generate_completions, ...)
    engine.py         the loop over step(): schedule, run, append tokens, retire requests
    rows.py           which running request sits in which decode row; the host block table
    scheduler.py      admission by free KV blocks, chunked prefill, preemption by recompute
    block_manager.py  KV blocks, reference counts, prompt sharing between samples
    model_runner.py   the layer stack over the paged cache, CUDA graphs for decode
    attention.py      attention calls (PyTorch reference; FlashAttention prefill + Triton decode)
    rope_kernel.py    the Triton kernel for RoPE + the K/V cache write of a decode step
    paged_kernel.py   the Triton paged-attention decode kernel
    sampler.py        per-request seeded sampling (greedy, temperature, top-p; PyTorch reference)
    sample_kernel.py  the same draw as one Triton kernel, no sort (CUDA)
"""

from tinyreason.generation.completions import (
    Completion,
    GenerationSettings,
    eos_token_ids_of,
    generate_completions,
    generate_token_ids,
)
from tinyreason.generation.engine import GenerationEngine

__all__ = ["Completion", "GenerationEngine", "GenerationSettings", "eos_token_ids_of", "generate_completions",
           "generate_token_ids"]
