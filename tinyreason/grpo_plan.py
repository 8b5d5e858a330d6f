"""GRPO's memory plan: the micro-batch and gradient checkpointing, chosen from free GPU memory.

TRL generates one rollout batch per optimizer step (per_device_train_batch_size x
gradient_accumulation_steps completions) and then trains on it in micro-batches. The gradient does
not depend on how that batch is cut for the per-sequence (grpo), per-max-length (dr_grpo) and
global-token (dapo) losses, so with `train.speed: fast` the plan is free to choose the cut:

  peak = weights (bf16) + the rollout engine (KV cache for every completion at full length, the
         merged copy of the LoRA-wrapped projections, decode scratch) + activations kept for the
         backward of one micro-batch (per token and layer, training.estimate_peak_bytes' generous count;
         with checkpointing only the layer inputs and one layer's worth) + 1.5 GiB of LoRA weights,
         optimizer state and workspace.
TRL scores completions through a fused LM head (tiles of the vocabulary), so no full-vocabulary
logits are counted. The plan takes the largest micro-batch (a divisor of the rollout batch)
without checkpointing whose peak fits in 85% of free memory, then the same with checkpointing;
`train.speed: faithful`, `loss_type: bnpo` (normalised per micro-batch) and CPU keep the params.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tinyreason.config import RunConfig
from tinyreason.training import GIB, ModelDims, estimate_peak_bytes, model_dims

KV_DTYPE_BYTES = 2
_SPLIT_INVARIANT_LOSSES = ("grpo", "dr_grpo", "dapo")


@dataclass(frozen=True)
class GrpoPlan:
    micro_batch: int
    accumulation: int
    gradient_checkpointing: bool
    estimated_peak_gib: float | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def engine_bytes(dims: ModelDims, completions: int, seq_len: int) -> int:
    """The rollout engine's share: KV for every completion at full length, the merged projections
    (rollout.MergedShadow), and 1 GiB for decode activations and CUDA-graph pools."""
    kv = completions * seq_len * dims.layers * 2 * dims.kv_heads * dims.head_dim * KV_DTYPE_BYTES
    merged = 2 * (dims.n_params - 2 * dims.embed_params)  # every projection of the layers
    return int(kv + max(merged, 0) + GIB)


def plan_grpo(cfg: RunConfig, *, cuda: bool, free_bytes: int | None = None, dims: ModelDims | None = None) -> GrpoPlan:
    """Pure: everything it depends on is an argument (see the module docstring)."""
    t, g = cfg.train, cfg.train.grpo
    rollout_batch = t.per_device_train_batch_size * t.gradient_accumulation_steps
    configured = GrpoPlan(t.per_device_train_batch_size, t.gradient_accumulation_steps, t.gradient_checkpointing)
    if t.speed == "faithful":
        return GrpoPlan(**{**configured.to_dict(), "reason": "train.speed=faithful: as configured"})
    if not cuda or free_bytes is None or dims is None or not dims.kv_heads or not dims.head_dim:
        return GrpoPlan(**{**configured.to_dict(), "reason": "no GPU memory estimate: as configured"})
    if g.loss_type not in _SPLIT_INVARIANT_LOSSES:
        return GrpoPlan(**{**configured.to_dict(),
                           "reason": f"loss_type {g.loss_type} normalises per micro-batch: as configured"})
    seq_len = g.max_prompt_length + g.max_completion_length
    fixed = engine_bytes(dims, rollout_batch, seq_len)
    budget = 0.85 * free_bytes
    for ckpt in (False, True):
        for micro in (d for d in range(rollout_batch, 0, -1) if rollout_batch % d == 0):
            need = fixed + estimate_peak_bytes(dims, micro * seq_len, 0, load_in_4bit=False,
                                               gradient_checkpointing=ckpt)
            if need <= budget:
                return GrpoPlan(micro, rollout_batch // micro, ckpt, round(need / GIB, 1),
                                f"estimated peak {need / GIB:.1f} GiB of {free_bytes / GIB:.1f} GiB free for "
                                f"{micro} sequence(s) of {seq_len} tokens a micro-batch")
    return GrpoPlan(1, rollout_batch, True, None, f"nothing estimated to fit in {free_bytes / GIB:.1f} GiB free: "
                                                  "one sequence a micro-batch, gradient checkpointing")


def make_grpo_plan(cfg: RunConfig) -> GrpoPlan:
    """`plan_grpo` with this machine's facts: CUDA, free GPU memory, the model's shape."""
    import torch

    cuda = torch.cuda.is_available()
    if not cuda or cfg.train.speed == "faithful":
        return plan_grpo(cfg, cuda=cuda)
    free, _ = torch.cuda.mem_get_info()
    return plan_grpo(cfg, cuda=True, free_bytes=free, dims=model_dims(cfg.model))
