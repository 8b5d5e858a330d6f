"""The generation loop: requests in, new token ids out.

`generate` is a loop over `step()`: the scheduler picks a prefill (new or preempted requests,
chunked) or `sync_every` decode steps for all running requests; the model runner executes it; the
host then appends the new tokens, ends requests at EOS or their budget, and frees their blocks.
Requests with the same prompt (the k samples of an evaluation problem, a GRPO group) are
prefilled once and forked: they share the prompt's full KV blocks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence as Seq

import torch
from tqdm.auto import tqdm

from tinyreason.generation.block_manager import BlockManager
from tinyreason.generation.model_runner import GREEDY, SAMPLE, TOP_P, ModelRunner
from tinyreason.generation.rows import DecodeRows
from tinyreason.generation.scheduler import Scheduler
from tinyreason.generation.sequence import Sequence, Status

_SEED_MIX = 0x9E3779B1  # request j of a call seeded s samples with seed s * _SEED_MIX + j


def request_seed(seed: int, index: int) -> int:
    return (int(seed) * _SEED_MIX + index) % (1 << 62)


@dataclass
class Call:
    """One generate call's state: its requests, their blocks and rows, the schedule."""
    seqs: list[Sequence]
    mode: str
    eos: set[int]
    blocks: BlockManager
    sched: Scheduler
    rows: DecodeRows
    bar: tqdm


class GenerationEngine:
    """Paged-KV, continuous-batching generation for HF decoder-only LMs of the Llama/Qwen2 family.

    Args:
        max_num_seqs: most requests in flight (decode batch rows).
        max_model_len: longest prompt + new tokens of one request.
        block_size: tokens per KV block (default 64 on CUDA, 16 elsewhere).
        num_blocks: KV blocks; default: planned from free GPU memory (`memory_utilization` of the
            card) and never more than `max_num_seqs` requests at full length need.
        prefill_tokens: most tokens in one prefill step (longer prompts are chunked).
        sync_every: decode steps between host syncs (new tokens are read and requests retired
            there; a request that ended mid-window wastes at most this many steps).
        fuse_weights: one GEMM for q/k/v and for gate/up by concatenating the weights (a copy: only
            for an engine that does not outlive weight updates). Weights already back to back in one
            buffer (rollout.MergedShadow) get the single GEMMs either way, as views.
    """

    def __init__(self, model, max_num_seqs: int = 256, max_model_len: int = 4096, block_size: int | None = None,
                 num_blocks: int | None = None, memory_utilization: float = 0.9, prefill_tokens: int = 8192,
                 sync_every: int = 16, use_cuda_graph: bool | None = None, compile: bool | None = None,
                 fuse_weights: bool = False):
        self.model = model
        on_cuda = next(model.parameters()).device.type == "cuda"
        block_size = block_size or (64 if on_cuda else 16)
        self.max_model_len = int(max_model_len)
        self.runner = ModelRunner(model, max_num_seqs, self.max_model_len, block_size, num_blocks, memory_utilization,
                                  prefill_tokens, use_cuda_graph, compile, fuse_weights)
        self.max_num_seqs, self.block_size = max_num_seqs, block_size
        self.prefill_tokens, self.sync_every = prefill_tokens, sync_every
        self.stats: dict[str, float] = {}

    @property
    def num_blocks(self) -> int:
        return self.runner.num_blocks

    @property
    def cache_bytes(self) -> int:
        return self.runner.num_blocks * self.runner.block_bytes

    @torch.inference_mode()
    def generate(self, prompt_ids: Seq[Seq[int]], max_new_tokens: int | Seq[int], temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, eos_token_ids: Seq[int] = (),
                 show_progress: bool = False,
                 seeds: Seq[int] | None = None) -> list[list[int]]:
        """New token ids per prompt (an EOS that ended a request is kept; nothing after it).

        max_new_tokens: one budget for all, or one per prompt. seeds: one per prompt (default:
        derived from `seed` and the prompt's index), so a request's samples depend only on its own
        seed, whatever else is in the batch. `self.truncated[j]` says whether request j ended at its budget.
        """
        call = self._start(prompt_ids, max_new_tokens, temperature, top_p, seed, eos_token_ids, show_progress, seeds)
        was_training = self.model.training
        self.model.eval()
        try:
            while call.sched.has_work() and self.step(call):
                pass
        finally:
            call.bar.close()
            if was_training:
                self.model.train()
        self.stats["preemptions"] = call.sched.preemptions
        self.stats["peak_blocks"] = call.blocks.peak_used
        self.truncated = [s.truncated for s in call.seqs]
        return [s.output for s in call.seqs]

    def _start(self, prompt_ids, max_new_tokens, temperature, top_p, seed, eos_token_ids, show_progress,
               seeds) -> Call:
        """Validate the requests, set the sampling mode, queue them (same-prompt requests forked)."""
        n = len(prompt_ids)
        budgets = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(m) for m in max_new_tokens]
        seeds = [request_seed(seed, j) for j in range(n)] if seeds is None else [int(s) for s in seeds]
        if len(budgets) != n or len(seeds) != n:
            raise ValueError("max_new_tokens and seeds need one entry per prompt")
        for p, m in zip(prompt_ids, budgets):
            if not p:
                raise ValueError("empty prompt")
            if len(p) + m > self.max_model_len:
                raise ValueError(f"a prompt of {len(p)} tokens + {m} new tokens exceeds the engine's "
                                 f"max_model_len {self.max_model_len}")
        self.runner.temperature.fill_(max(float(temperature), 1e-5))
        self.runner.top_p.fill_(float(top_p))
        blocks = BlockManager(self.runner.num_blocks, self.block_size)
        call = Call(seqs=[Sequence(j, list(p), m, s) for j, (p, m, s) in enumerate(zip(prompt_ids, budgets, seeds))],
                    mode=GREEDY if temperature <= 0 else (TOP_P if top_p < 1.0 else SAMPLE),
                    eos=set(int(e) for e in eos_token_ids), blocks=blocks,
                    sched=Scheduler(blocks, self.max_num_seqs, self.prefill_tokens),
                    rows=DecodeRows(self.max_num_seqs, self.runner.max_blocks),
                    bar=tqdm(total=n, desc="generate", disable=not show_progress))
        leaders: dict[tuple, Sequence] = {}
        followers: dict[int, list[Sequence]] = {}
        for seq in call.seqs:
            if seq.budget <= 0:
                seq.status = Status.FINISHED
                continue
            lead = leaders.setdefault(tuple(seq.prompt), seq)
            if lead is not seq:
                followers.setdefault(lead.index, []).append(seq)
        for lead in leaders.values():
            call.sched.add(lead, followers.get(lead.index, ()))
        self.stats = dict.fromkeys(("prefill_steps", "prefill_tokens", "prefill_s", "decode_steps", "decode_row_steps",
                                    "decode_kv_tokens", "decode_s", "forked", "preemptions"), 0.0)
        return call

    def step(self, call: Call) -> bool:
        """One scheduled step: a prefill, or up to `sync_every` decode steps. False when done."""
        chunks = call.sched.schedule_prefill()
        if chunks:
            self._prefill(call, chunks)
            return True
        if not call.sched.running:
            if call.sched.waiting:
                raise RuntimeError("generation stalled: queued requests fit no KV blocks")
            return False
        self._decode(call)
        return True

    def _prefill(self, call: Call, chunks: list[tuple[Sequence, int]]) -> None:
        """Run the chunks; requests whose prompt is now cached fork their followers, sample their
        first token and take a decode row."""
        t0, runner, st = time.perf_counter(), self.runner, self.stats
        logits = runner.prefill([(s.tokens, s.num_cached, k, s.blocks) for s, k in chunks])
        done, rows_of_logits = [], []
        for r, (seq, k) in enumerate(chunks):
            seq.num_cached += k
            if seq.num_cached < len(seq):
                continue
            call.sched.prefilled(seq)
            forked, _ = call.sched.take_followers(seq)
            for f in forked:
                copy = call.blocks.fork(seq, f)
                if copy:
                    runner.copy_block(*copy)
                f.status = Status.RUNNING
                call.sched.running.append(f)
            st["forked"] += len(forked)
            done += [seq, *forked]
            rows_of_logits += [r] * (1 + len(forked))
        if done:
            idx = torch.tensor(rows_of_logits, device=runner.device)
            firsts = runner.sample(logits[idx], [s.seed for s in done], [len(s) for s in done], call.mode)
            for s, t in zip(done, firsts):
                if not self._append(call, s, [t]):
                    call.rows.assign(s, t)
        st["prefill_steps"] += 1
        st["prefill_tokens"] += sum(k for _, k in chunks)
        st["prefill_s"] += time.perf_counter() - t0
        call.rows.upload(runner)

    def _decode(self, call: Call) -> None:
        """Up to `sync_every` decode steps for every running request (graph replays, no host sync
        in between), then one read of the new tokens."""
        t0, runner, st, sched = time.perf_counter(), self.runner, self.stats, call.sched
        steps = min(self.sync_every, max(s.remaining for s in sched.running))
        before = set(s.index for s in sched.running)
        steps = sched.reserve_decode(steps)
        for j in before - set(s.index for s in sched.running):  # preempted: their rows go free
            call.rows.release(j)
        if not sched.running:  # all preempted for a part-prefilled request: it prefills next
            return
        call.rows.add_blocks(sched.running)
        call.rows.upload(runner)
        rows = len(call.rows)
        hist = torch.empty(rows, steps, dtype=torch.long, device=runner.device)
        for step in range(steps):
            runner.decode_step(rows, call.mode)
            hist[:, step].copy_(runner.tok[:rows])
        new = hist.tolist()
        st["decode_steps"] += steps
        st["decode_row_steps"] += rows * steps
        # K/V tokens the steps must read (context incl. the new token): the bandwidth floor's term
        st["decode_kv_tokens"] += sum(len(s) for s in sched.running) * steps + len(sched.running) * steps * (steps - 1) // 2
        for seq in list(sched.running):
            seq.num_cached = len(seq) - 1 + steps  # after append, all but the last token cached
            self._append(call, seq, new[call.rows.row_of[seq.index]])
        st["decode_s"] += time.perf_counter() - t0

    def _append(self, call: Call, seq: Sequence, new: list[int]) -> bool:
        """Add new tokens; True (and the request retired) if it ended at EOS or its budget."""
        out = seq.output
        for t in new:
            out.append(t)
            if t in call.eos or len(out) >= seq.budget:
                break
        else:
            return False
        seq.truncated = out[-1] not in call.eos
        if seq.status == Status.RUNNING:
            call.sched.finish(seq)
            call.rows.release(seq.index)
        else:
            seq.status = Status.FINISHED
        call.bar.update(1)
        return True
