"""Generation engine tests (CPU, float32, tiny random Qwen2 built from a config).

The engine's own loop (paged KV cache with tiny blocks, admission by free blocks, chunked prefill,
preemption and recompute, prompt forks, continuous batching) runs here eagerly with the PyTorch
attention and is compared token for token with HF `generate` (left padding, dynamic cache).
The CUDA paths (Triton decode, FlashAttention prefill, graphs) are checked on a GPU by
bench/generation.py (`check` step) against the same PyTorch attention.
"""

from __future__ import annotations

import random

import pytest
import torch

from tinyreason.generation import (
    Completion,
    GenerationEngine,
    GenerationSettings,
    generate_completions,
    generate_token_ids,
)

VOCAB = 320


def tiny_qwen2(vocab: int = VOCAB, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_theta=1_000_000.0, tie_word_embeddings=True, initializer_range=0.2,
        attn_implementation="sdpa",
    )
    model = Qwen2ForCausalLM(cfg).float().eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def random_prompts(n: int, lo: int, hi: int, vocab: int = VOCAB, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


@torch.inference_mode()
def hf_greedy(model, prompts: list[list[int]], max_new: int, eos: int | None = None) -> list[list[int]]:
    """HF generate, left padded, one batch; new tokens per row, cut after the first EOS."""
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, T - len(p):] = torch.tensor(p)
        mask[r, T - len(p):] = 1
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         pad_token_id=0, eos_token_id=eos)[:, T:].tolist()
    rows = []
    for row in out:
        if eos is not None and eos in row:
            row = row[:row.index(eos) + 1]
        rows.append(row)
    return rows


def test_engine_greedy_matches_hf_generate_mixed_lengths():
    model = tiny_qwen2()
    prompts = random_prompts(7, 2, 23)
    ref = hf_greedy(model, prompts, max_new=24)
    # blocks of 4 tokens: every request crosses several block boundaries
    engine = GenerationEngine(model, max_num_seqs=8, max_model_len=64, block_size=4, sync_every=5)
    assert engine.generate(prompts, 24) == ref
    assert engine.stats["preemptions"] == 0


def test_tiny_memory_preempts_and_still_matches_hf():
    """A KV budget far below what the requests need at once, and prefill chunks shorter than some
    prompts: requests are admitted as blocks free up, preempted when they run out (and recomputed),
    long prompts prefilled over several steps; the tokens are still exactly HF's."""
    model = tiny_qwen2()
    prompts = random_prompts(9, 2, 23, seed=11)
    ref = hf_greedy(model, prompts, max_new=24)
    engine = GenerationEngine(model, max_num_seqs=8, max_model_len=48, block_size=4, num_blocks=16,
                              prefill_tokens=10, sync_every=4)
    assert engine.generate(prompts, 24) == ref
    assert engine.stats["preemptions"] > 0
    assert engine.stats["peak_blocks"] <= engine.num_blocks - 1  # admission never exceeds the budget


def test_fused_weights_match_hf_generate():
    model = tiny_qwen2()
    prompts = random_prompts(5, 2, 19, seed=6)
    ref = hf_greedy(model, prompts, max_new=12)
    engine = GenerationEngine(model, max_num_seqs=4, max_model_len=48, block_size=8, fuse_weights=True)
    assert engine.runner.fused is not None
    assert engine.generate(prompts, 12) == ref


def test_continuous_batching_more_prompts_than_slots():
    model = tiny_qwen2()
    prompts = random_prompts(11, 1, 17, seed=2)
    budgets = [3, 20, 7, 1, 12, 20, 5, 9, 16, 2, 11]
    ref = hf_greedy(model, prompts, max_new=20)
    engine = GenerationEngine(model, max_num_seqs=3, max_model_len=48, block_size=4, sync_every=4)
    got = engine.generate(prompts, budgets)
    assert got == [r[:b] for r, b in zip(ref, budgets)]
    assert engine.truncated == [True] * len(prompts)  # no EOS: every request ended at its budget
    # the engine is reused across calls; a second call (other order) still matches
    assert engine.generate(prompts[::-1], 20) == ref[::-1]


def test_eos_stops_request():
    model = tiny_qwen2()
    prompts = random_prompts(6, 3, 12, seed=3)
    free = hf_greedy(model, prompts, max_new=16)
    eos = free[0][5]  # a token the model really emits
    ref = hf_greedy(model, prompts, max_new=16, eos=eos)
    assert any(len(r) < 16 for r in ref)
    engine = GenerationEngine(model, max_num_seqs=4, max_model_len=48, block_size=4, sync_every=3)
    assert engine.generate(prompts, 16, eos_token_ids=[eos]) == ref
    assert engine.truncated == [len(r) == 16 and r[-1] != eos for r in ref]


def test_sampling_is_seeded_per_request():
    model = tiny_qwen2()
    prompts = random_prompts(5, 2, 10, seed=4)
    engine = GenerationEngine(model, max_num_seqs=4, max_model_len=48, block_size=4)
    a = engine.generate(prompts, 12, temperature=1.0, top_p=0.9, seed=7)
    assert a == engine.generate(prompts, 12, temperature=1.0, top_p=0.9, seed=7)
    assert a != engine.generate(prompts, 12, temperature=1.0, top_p=0.9, seed=8)
    assert all(len(x) == 12 for x in a)
    greedy = engine.generate(prompts, 12)
    assert a != greedy
    assert engine.generate(prompts, 12, temperature=1e-4, seed=3) == greedy  # T -> 0 is argmax


def test_sampled_tokens_do_not_depend_on_slots_batch_or_preemption():
    """A request's samples come from its own seed: the same whatever the slot count, the memory
    budget (preemption and recompute), the other requests in the call, or their order."""
    model = tiny_qwen2()
    prompts = random_prompts(7, 2, 20, seed=9)
    seeds = [101, 7, 55, 3, 99, 12, 64]
    kw = dict(temperature=0.8, top_p=0.9, seeds=seeds)
    want = GenerationEngine(model, max_num_seqs=8, max_model_len=48, block_size=4).generate(prompts, 20, **kw)
    assert len(set(map(tuple, want))) == len(want)
    for slots, blocks in ((1, None), (3, None), (8, 14)):
        engine = GenerationEngine(model, max_num_seqs=slots, max_model_len=48, block_size=4, num_blocks=blocks,
                                  prefill_tokens=12, sync_every=3)
        assert engine.generate(prompts, 20, **kw) == want, (slots, blocks)
        if blocks:
            assert engine.stats["preemptions"] > 0
    alone = GenerationEngine(model, max_num_seqs=2, max_model_len=48, block_size=4)
    assert alone.generate(prompts[3:4], 20, temperature=0.8, top_p=0.9, seeds=seeds[3:4]) == want[3:4]
    assert alone.generate(prompts[::-1], 20, temperature=0.8, top_p=0.9, seeds=seeds[::-1]) == want[::-1]


def test_samples_of_one_prompt_share_its_prefill():
    """k samples of a prompt: one prefill, then k - 1 forks sharing its full blocks (the partial
    last block copied); the tokens equal those of each sample generated on its own."""
    model = tiny_qwen2()
    base = random_prompts(2, 9, 14, seed=12)
    prompts = [base[0]] * 4 + [base[1]] * 3
    seeds = list(range(20, 27))
    engine = GenerationEngine(model, max_num_seqs=8, max_model_len=48, block_size=4)
    got = engine.generate(prompts, 10, temperature=1.0, seeds=seeds)
    assert engine.stats["forked"] == 5
    assert engine.stats["prefill_tokens"] == len(base[0]) + len(base[1])
    assert len(set(map(tuple, got))) == 7
    for p, s, g in zip(prompts, seeds, got):
        assert engine.generate([p], 10, temperature=1.0, seeds=[s]) == [g]


def test_request_larger_than_the_cache_is_a_clear_error():
    model = tiny_qwen2()
    engine = GenerationEngine(model, max_num_seqs=2, max_model_len=64, block_size=4, num_blocks=5)
    with pytest.raises(ValueError, match="needs 8 KV blocks; the cache has 4"):
        engine.generate(random_prompts(1, 10, 10), 20)


def test_sampler_draws_from_the_distribution_and_cuts_the_nucleus():
    from tinyreason.generation import sampler

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    n = 20000
    logits = probs.log().expand(n, 4)
    seeds, positions = torch.full((n,), 5), torch.arange(n)
    one = torch.ones(())
    freq = torch.bincount(sampler.sample(logits, seeds, positions, one, None), minlength=4).float() / n
    assert torch.allclose(freq, probs, atol=0.015)
    nucleus = sampler.sample(logits, seeds, positions, one, torch.tensor(0.7))  # keeps 0.5 + 0.3
    freq = torch.bincount(nucleus, minlength=4).float() / n
    assert freq[2:].sum() == 0 and abs(freq[0] - 0.5 / 0.8) < 0.015
    u = sampler.uniform(seeds[:4], positions[:4], 1000)
    assert 0 < u.min() and u.max() < 1 and torch.equal(u, sampler.uniform(seeds[:4], positions[:4], 1000))


def test_lora_unmerged_matches_merged():
    peft = pytest.importorskip("peft")
    model = tiny_qwen2()
    lcfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    pm = peft.get_peft_model(model, lcfg)
    for name, p in pm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # make the adapter change the outputs
    prompts = random_prompts(5, 2, 12, seed=5)
    unmerged = GenerationEngine(pm, max_num_seqs=4, max_model_len=48, block_size=4).generate(prompts, 10)
    merged_model = pm.merge_and_unload().eval()
    assert not hasattr(merged_model, "peft_config")
    ref = hf_greedy(merged_model, prompts, max_new=10)
    assert unmerged == ref
    assert ref != hf_greedy(tiny_qwen2(), prompts, max_new=10)  # the adapter mattered


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["The answer is 42. Let us think step by step.", "Question: what is 3 + 4? Answer: 7",
              "#### 18 dollars per day", "Janet sells 16 - 3 - 4 = 9 duck eggs a day."] * 20
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 2, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def test_completions_api_engine_matches_hf():
    tokenizer = _tiny_tokenizer()
    model = tiny_qwen2(vocab=len(tokenizer))
    prompts = ["Question: what is 3 + 4?", "The answer", "Janet sells 16 eggs. #### "]
    base = GenerationSettings(max_new_tokens=20)
    hf = generate_completions(model, tokenizer, prompts, base, batch_size=2, show_progress=False)
    eng = generate_completions(model, tokenizer, prompts, base, show_progress=False, use_engine=True)
    assert eng == hf  # same text, length and truncated flag on both paths
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    toks, truncated = generate_token_ids(model, ids, base, use_cuda_graph=False)
    assert [tokenizer.decode(t, skip_special_tokens=True) for t in toks] == [c.text for c in hf]
    assert truncated == [c.truncated for c in hf]


def _force_eos(model, eos_id: int, rows=None):
    """A forward hook on lm_head that makes EOS the greedy pick (in `rows` of the batch, or all)."""
    def hook(module, inputs, out):
        out = out.clone()
        idx = (slice(None),) if rows is None else (rows,)
        out[idx + (Ellipsis, eos_id)] += 1e4
        return out
    return model.lm_head.register_forward_hook(hook)


def test_completion_length_and_truncated_flag():
    """num_tokens counts the new tokens up to and including EOS; truncated = the cap was hit without
    EOS. HF path: a row that ends early is padded afterwards, and the padding is not counted."""
    tokenizer = _tiny_tokenizer()
    model = tiny_qwen2(vocab=len(tokenizer))
    prompts = ["Question: what is 3 + 4?", "The answer", "Janet sells 16 eggs. #### "]
    settings = GenerationSettings(max_new_tokens=6)
    capped = generate_completions(model, tokenizer, prompts, settings, show_progress=False)
    assert [(c.num_tokens, c.truncated) for c in capped] == [(6, True)] * 3
    assert generate_completions(model, tokenizer, prompts, settings, show_progress=False, use_engine=True) == capped

    eos = tokenizer.eos_token_id
    handle = _force_eos(model, eos, rows=0)  # only the first prompt of the HF batch ends at once
    try:
        mixed = generate_completions(model, tokenizer, prompts, settings, batch_size=3, show_progress=False)
    finally:
        handle.remove()
    assert mixed[0] == Completion(text="", num_tokens=1, truncated=False)
    assert [(c.num_tokens, c.truncated) for c in mixed[1:]] == [(6, True)] * 2

    handle = _force_eos(model, eos)
    try:
        for use_engine in (False, True):
            done = generate_completions(model, tokenizer, prompts, settings, show_progress=False,
                                        use_engine=use_engine)
            assert done == [Completion(text="", num_tokens=1, truncated=False)] * 3, use_engine
    finally:
        handle.remove()


