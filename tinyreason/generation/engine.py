"""The generation loop: requests in, new token ids out.

Each step the scheduler picks a prefill (new or preempted requests, chunked) or `sync_every`
decode steps for all running requests; the model runner executes it; the host then appends the
new tokens, ends requests at EOS or their budget, and frees their blocks.
Requests with the same prompt (the k samples of an evaluation problem, a GRPO group) are
prefilled once and forked: they share the prompt's full KV blocks.
"""

from __future__ import annotations

import time
from typing import Sequence as Seq

import torch
from tqdm.auto import tqdm

from tinyreason.generation.block_manager import BlockManager
from tinyreason.generation.model_runner import GREEDY, SAMPLE, TOP_P, ModelRunner
from tinyreason.generation.scheduler import Scheduler
from tinyreason.generation.sequence import Sequence, Status

_SEED_MIX = 0x9E3779B1  # request j of a call seeded s samples with seed s * _SEED_MIX + j


def request_seed(seed: int, index: int) -> int:
    return (int(seed) * _SEED_MIX + index) % (1 << 62)


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
                 fuse_weights: bool = False, min_refill: int | None = None):
        self.model = model
        on_cuda = next(model.parameters()).device.type == "cuda"
        block_size = block_size or (64 if on_cuda else 16)
        self.max_model_len = int(max_model_len)
        self.runner = ModelRunner(model, max_num_seqs, self.max_model_len, block_size, num_blocks, memory_utilization,
                                  prefill_tokens, use_cuda_graph, compile, fuse_weights)
        self.max_num_seqs, self.block_size = max_num_seqs, block_size
        self.prefill_tokens, self.sync_every, self.min_refill = prefill_tokens, sync_every, min_refill
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
        mode = GREEDY if temperature <= 0 else (TOP_P if top_p < 1.0 else SAMPLE)
        runner = self.runner
        runner.temperature.fill_(max(float(temperature), 1e-5))
        runner.top_p.fill_(float(top_p))
        eos = set(int(e) for e in eos_token_ids)
        blocks = BlockManager(runner.num_blocks, self.block_size)
        sched = Scheduler(blocks, self.max_num_seqs, self.prefill_tokens, self.min_refill)
        seqs = [Sequence(j, list(p), m, s) for j, (p, m, s) in enumerate(zip(prompt_ids, budgets, seeds))]
        leaders: dict[tuple, Sequence] = {}
        followers: dict[int, list[Sequence]] = {}
        for seq in seqs:
            if seq.budget <= 0:
                seq.status = Status.FINISHED
                continue
            lead = leaders.setdefault(tuple(seq.prompt), seq)
            if lead is not seq:
                followers.setdefault(lead.index, []).append(seq)
        for lead in leaders.values():
            sched.add(lead, followers.get(lead.index, ()))
        row_of: dict[int, int] = {}  # request index -> decode row (stable while it runs)
        in_table: dict[int, int] = {}  # request index -> how many of its blocks its row holds
        free_rows = list(range(self.max_num_seqs - 1, -1, -1))
        table = torch.zeros(self.max_num_seqs, runner.max_blocks, dtype=torch.int32)
        hist = torch.zeros(self.max_num_seqs, self.sync_every, dtype=torch.long, device=runner.device)
        st = self.stats = dict.fromkeys(("prefill_steps", "prefill_tokens", "prefill_s", "decode_steps",
                                         "decode_row_steps", "decode_kv_tokens", "decode_s", "forked",
                                         "preemptions"), 0.0)
        bar = tqdm(total=n, desc="generate", disable=not show_progress)
        was_training = self.model.training
        self.model.eval()

        def retire(seq: Sequence, truncated: bool) -> None:
            seq.truncated = truncated
            if seq.status == Status.RUNNING:
                sched.finish(seq)
                row = row_of.pop(seq.index, None)
                if row is not None:
                    table[row].zero_()
                    free_rows.append(row)
            else:
                seq.status = Status.FINISHED
            bar.update(1)

        def append(seq: Sequence, new: list[int]) -> bool:
            """Add new tokens; True (and the request retired) if it ended."""
            out, ended = seq.output, False
            for t in new:
                out.append(t)
                if t in eos or len(out) >= seq.budget:
                    ended = True
                    break
            if ended:
                retire(seq, out[-1] not in eos)
            return ended

        def start_running(seq: Sequence, first: int) -> None:
            if append(seq, [first]):
                return
            row = free_rows.pop()
            row_of[seq.index] = row
            table[row, :len(seq.blocks)] = torch.tensor(seq.blocks, dtype=torch.int32)
            in_table[seq.index] = len(seq.blocks)
            new_rows.append((row, first, len(seq) - 1, seq.seed, len(seq.prompt) + seq.budget - 1))

        try:
            while sched.has_work():
                new_rows: list[tuple] = []  # (row, token, position, seed, last position) to upload
                chunks = sched.schedule_prefill()
                if chunks:
                    t0 = time.perf_counter()
                    logits = runner.prefill([(s.tokens, s.num_cached, k, s.blocks) for s, k in chunks])
                    done, rows_of_logits = [], []
                    for r, (seq, k) in enumerate(chunks):
                        seq.num_cached += k
                        if seq.num_cached == len(seq):
                            sched.prefilled(seq)
                            forked, _ = sched.take_followers(seq)
                            for f in forked:
                                copy = blocks.fork(seq, f)
                                if copy:
                                    runner.copy_block(*copy)
                                f.status = Status.RUNNING
                                sched.running.append(f)
                            st["forked"] += len(forked)
                            for s in [seq, *forked]:
                                done.append(s)
                                rows_of_logits.append(r)
                    if done:
                        idx = torch.tensor(rows_of_logits, device=runner.device)
                        firsts = runner.sample(logits[idx], [s.seed for s in done], [len(s) for s in done], mode)
                        for s, t in zip(done, firsts):
                            start_running(s, t)
                    st["prefill_steps"] += 1
                    st["prefill_tokens"] += sum(k for _, k in chunks)
                    st["prefill_s"] += time.perf_counter() - t0
                    self._upload(new_rows, table, free_rows)
                    continue
                if not sched.running:
                    if sched.waiting:
                        raise RuntimeError("generation stalled: queued requests fit no KV blocks")
                    break
                t0 = time.perf_counter()
                steps = min(self.sync_every, max(s.remaining for s in sched.running))
                before = set(s.index for s in sched.running)
                steps = sched.reserve_decode(steps)
                for j in before - set(s.index for s in sched.running):  # preempted: their rows go free
                    row = row_of.pop(j)
                    table[row].zero_()
                    free_rows.append(row)
                if not sched.running:  # all preempted for a part-prefilled request: prefill it first
                    continue
                for seq in sched.running:  # only the blocks reserve_decode just added (the rest are in place)
                    row, have = row_of[seq.index], in_table[seq.index]
                    if len(seq.blocks) > have:
                        table[row, have:len(seq.blocks)] = torch.tensor(seq.blocks[have:], dtype=torch.int32)
                        in_table[seq.index] = len(seq.blocks)
                self._upload([], table, free_rows)
                rows = max(row_of.values()) + 1
                for step in range(steps):
                    runner.decode_step(rows, mode)
                    hist[:rows, step].copy_(runner.tok[:rows])
                new = hist[:rows, :steps].tolist()
                st["decode_steps"] += steps
                st["decode_row_steps"] += rows * steps
                # K/V tokens the steps must read (context incl. the new token): the bandwidth floor's term
                st["decode_kv_tokens"] += sum(len(s) for s in sched.running) * steps + \
                    len(sched.running) * steps * (steps - 1) // 2
                for seq in list(sched.running):
                    seq.num_cached = len(seq) - 1 + steps  # after append, all but the last token cached
                    append(seq, new[row_of[seq.index]])
                st["decode_s"] += time.perf_counter() - t0
        finally:
            bar.close()
            if was_training:
                self.model.train()
        st["preemptions"] = sched.preemptions
        st["peak_blocks"] = blocks.peak_used
        self.truncated = [s.truncated for s in seqs]
        return [s.output for s in seqs]

    def _upload(self, new_rows, table, free_rows) -> None:
        """Host state -> the runner's static decode inputs. Free rows restart at position 0 (their
        steps write the scratch block), so an idle row never walks past its block table."""
        r = self.runner
        r.block_table.copy_(table.to(r.device, non_blocking=True))
        if free_rows:
            r.pos.index_fill_(0, torch.tensor(free_rows, dtype=torch.long).to(r.device), 0)
        if new_rows:
            rows, *values = (torch.tensor(c, dtype=torch.long).to(r.device) for c in zip(*new_rows))
            for buf, value in zip((r.tok, r.pos, r.seeds, r.limit), values):
                buf.index_copy_(0, rows, value)
