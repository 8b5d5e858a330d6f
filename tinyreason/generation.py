"""Batched text generation for evaluation (and GRPO rollouts).

Public API (kept stable for evaluation, chat and GRPO):
    GenerationSettings: max_new_tokens, temperature (0 = greedy), top_p, seed, stop_strings
    generate_completions(model, tokenizer, prompts, settings, batch_size) -> list[str]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0
    stop_strings: tuple[str, ...] = field(default_factory=tuple)


def _truncate_at_stop(text: str, stop_strings: tuple[str, ...]) -> str:
    cut = len(text)
    for stop in stop_strings:
        idx = text.find(stop)
        if idx != -1:
            cut = min(cut, idx)
    return text[:cut]


@torch.inference_mode()
def generate_completions(model, tokenizer, prompts: list[str], settings: GenerationSettings,
                         batch_size: int = 16, show_progress: bool = True) -> list[str]:
    """Generate one completion per prompt with HF `generate` (left padding, batched).

    Prompts are already-rendered chat text; the returned strings hold only the new text, cut at
    the first stop string.
    """
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    torch.manual_seed(settings.seed)
    do_sample = settings.temperature > 0
    outputs: list[str] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generate", disable=not show_progress):
        chunk = prompts[start:start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        gen = model.generate(
            **enc,
            max_new_tokens=settings.max_new_tokens,
            do_sample=do_sample,
            temperature=settings.temperature if do_sample else None,
            top_p=settings.top_p if do_sample else None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = gen[:, enc["input_ids"].shape[1]:]
        for row in new_tokens:
            text = tokenizer.decode(row, skip_special_tokens=True)
            outputs.append(_truncate_at_stop(text, settings.stop_strings))
    return outputs
