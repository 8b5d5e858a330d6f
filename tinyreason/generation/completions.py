"""Text in, text out: the calls evaluation, chat and GRPO use.

On CUDA (or with use_engine=True) prompts go through the paged engine; on CPU
`generate_completions` falls back to HF `generate` in batches of `batch_size` (simple, and what a
CPU run needs). Either way `batch_size` is the most requests in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from tinyreason.generation.engine import GenerationEngine


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int   # new tokens generated (an ending EOS counts)
    truncated: bool   # stopped at max_new_tokens, not at EOS


def eos_token_ids_of(model, tokenizer=None) -> list[int]:
    """EOS ids from the tokenizer and the model's generation config (union, order kept)."""
    ids: list[int] = []
    for x in (getattr(tokenizer, "eos_token_id", None), getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        for i in (x if isinstance(x, (list, tuple)) else [x]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def generate_token_ids(model, prompt_ids: Sequence[Sequence[int]], settings: GenerationSettings,
                       eos_token_ids: Sequence[int] = (), max_num_seqs: int | None = 256,
                       show_progress: bool = False, **engine_kwargs) -> tuple[list[list[int]], list[bool]]:
    """Token ids in; new token ids (EOS kept when it ended a request) and truncated flags out.
    max_num_seqs None: every prompt at once, as memory allows."""
    budgets = [settings.max_new_tokens] * len(prompt_ids)
    # a per-call engine cannot go stale, so fused weight copies are safe (plain Linear only)
    engine_kwargs.setdefault("fuse_weights", next(model.parameters()).is_cuda)
    need = max((len(p) + m for p, m in zip(prompt_ids, budgets)), default=1)
    slots = max(1, min(max_num_seqs or len(prompt_ids), len(prompt_ids)))
    engine = GenerationEngine(model, max_num_seqs=slots, max_model_len=need, **engine_kwargs)
    out = engine.generate(prompt_ids, budgets, temperature=settings.temperature, top_p=settings.top_p,
                          seed=settings.seed, eos_token_ids=eos_token_ids, show_progress=show_progress)
    return out, engine.truncated


@torch.inference_mode()
def generate_completions(model, tokenizer, prompts: list[str], settings: GenerationSettings,
                         batch_size: int | None = 16, show_progress: bool = True,
                         use_engine: bool | None = None) -> list[Completion]:
    """One completion per rendered chat prompt: the new text.

    batch_size: most requests in flight (None: as many as memory allows; on the HF fallback, all).
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    eos_ids = eos_token_ids_of(model, tokenizer) or [tokenizer.eos_token_id]
    if use_engine is None:
        use_engine = device.type == "cuda"
    if use_engine:
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        new, truncated = generate_token_ids(model, ids, settings, eos_token_ids=eos_ids,
                                            max_num_seqs=batch_size, show_progress=show_progress)
        out = []
        for toks, cut in zip(new, truncated):
            out.append(Completion(tokenizer.decode(toks, skip_special_tokens=True), len(toks), cut))
        return out

    tokenizer.padding_side = "left"
    torch.manual_seed(settings.seed)
    do_sample = settings.temperature > 0
    outputs: list[Completion] = []
    step = batch_size or len(prompts) or 1
    for start in tqdm(range(0, len(prompts), step), desc="generate", disable=not show_progress):
        enc = tokenizer(prompts[start:start + step], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        gen = model.generate(**enc, max_new_tokens=settings.max_new_tokens, do_sample=do_sample,
                             temperature=settings.temperature if do_sample else None,
                             top_p=settings.top_p if do_sample else None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids or tokenizer.eos_token_id)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            ended = next((i for i, t in enumerate(row) if t in eos_ids), None)
            toks = row if ended is None else row[:ended + 1]
            outputs.append(Completion(tokenizer.decode(toks, skip_special_tokens=True), len(toks),
                                      ended is None and len(toks) >= settings.max_new_tokens))
    return outputs
