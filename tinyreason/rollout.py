"""How GRPO rollouts are generated: `train.grpo.rollout` -> what TRL's GRPOTrainer is given.

    engine  tinyreason.generation's paged engine through TRL's `rollout_func` (`EngineRollout`),
            optionally on a merged copy of the adapted weights (`MergedShadow`); auto on CUDA
    trl     TRL's own HF `generate` (auto on CPU)
    vllm    TRL's vLLM integration (`use_vllm`, colocate or server mode); needs `pip install vllm`
            (the check stage refuses it otherwise)

Reproducible across a resume: HF generate draws from torch's global RNG, which Trainer saves in each
checkpoint (rng_state.pth) and restores; the engine seeds each rollout from the global step.
"""

from __future__ import annotations

import torch

from tinyreason.config import GrpoSettings, RunConfig
from tinyreason.errors import TinyReasonError


def rollout_kind(cfg: RunConfig) -> str:
    """engine, trl or vllm: `auto` is the engine on CUDA and TRL's HF generate elsewhere."""
    rollout = cfg.train.grpo.rollout
    if rollout == "auto":
        return "engine" if torch.cuda.is_available() else "trl"
    return rollout


def vllm_arguments(g: GrpoSettings) -> dict:
    """GRPOConfig arguments of `rollout: vllm` (empty otherwise). In server mode the memory share is
    the server's own flag (`trl vllm-serve --gpu_memory_utilization`), so it is passed for colocate only."""
    if g.rollout != "vllm":
        return {}
    args = {"use_vllm": True, "vllm_mode": g.vllm_mode}
    if g.vllm_mode == "colocate":
        args["vllm_gpu_memory_utilization"] = g.vllm_gpu_memory_utilization
    return args


def _quantized(model) -> bool:
    """4-bit (QLoRA) bases are not merged for rollouts: the engine runs the PEFT model as is."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "hf_quantizer", None) is not None)


# Projections the engine runs as one GEMM (model_runner._fuse): their merged weights share one buffer
_JOINT = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))


def _joint_slots(base) -> dict:
    """name -> a row block of one buffer per layer's q/k/v and gate/up, when LoRA wraps all of a
    group: the engine then reads the group as one weight, with no copy that could go stale."""
    slots = {}
    for lname, layer in base.model.layers.named_children():
        for parent, names in _JOINT:
            mods = [getattr(getattr(layer, parent, None), n, None) for n in names]
            if not all(hasattr(m, "base_layer") and hasattr(m, "lora_A") for m in mods):
                continue
            weights = [m.base_layer.weight for m in mods]
            joint = torch.empty(sum(w.shape[0] for w in weights), weights[0].shape[1], dtype=weights[0].dtype,
                                device=weights[0].device)
            for n, block in zip(names, joint.split([w.shape[0] for w in weights])):
                slots[f"model.layers.{lname}.{parent}.{n}"] = block
    return slots


class MergedShadow:
    """A plain copy of a PEFT LoRA model for rollouts: W + scaling * B @ A, refreshed on demand.

    Every tensor that LoRA does not touch (embeddings, norms, biases, rotary buffers) is shared with
    the training model by reference; each LoRA-wrapped linear gets its own merged weight, written in
    place by `refresh()` so CUDA graphs captured over it see new weights. The training model's own
    weights are never modified (merging and unmerging in bf16 in place would drift). Costs one copy
    of the adapted projections (~2.6 GB in bf16 for a 1.5B model)."""

    def __init__(self, peft_model):
        base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
        with torch.device("meta"):
            shadow = type(base)(base.config)
        slots = _joint_slots(base)
        self.pairs = []  # (merged weight, base weight, lora_A, lora_B, scaling)
        for name, module in shadow.named_modules():
            source = base.get_submodule(name)
            lora = hasattr(source, "base_layer") and hasattr(source, "lora_A")
            for pname, _ in list(module.named_parameters(recurse=False)):
                if lora and pname == "weight":
                    adapter = source.active_adapters[0]
                    w = source.base_layer.weight
                    merged = slots.get(name)
                    merged = torch.empty_like(w, requires_grad=False) if merged is None else merged
                    self.pairs.append((merged, w, source.lora_A[adapter].weight, source.lora_B[adapter].weight,
                                       float(source.scaling[adapter])))
                    tensor = merged
                else:
                    holder = source.base_layer if lora else source
                    tensor = getattr(holder, pname).detach()
                setattr(module, pname, torch.nn.Parameter(tensor, requires_grad=False))
            for bname, _ in list(module.named_buffers(recurse=False)):
                module._buffers[bname] = getattr(source.base_layer if lora else source, bname)
        if not self.pairs:
            raise TinyReasonError("rollout merging needs a PEFT LoRA model (fix: set train.grpo.merge_for_rollout=false)")
        shadow.eval()
        self.model = shadow
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        for merged, w, a, b, scaling in self.pairs:
            merged.copy_(torch.addmm(w.float(), b.float(), a.float(), alpha=scaling))


class EngineRollout:
    """TRL `rollout_func` that samples completions with tinyreason.generation's engine.

    TRL hands over the per-process prompts, each already repeated num_generations times; one
    completion per entry comes back. The engine (static KV cache, CUDA graphs, continuous batching)
    is built once and reused; the k completions of a prompt share its prefill. With `merge_for_rollout` it runs on a `MergedShadow` (plain weights,
    refreshed from the adapter before every rollout: no LoRA matmuls per token); else it runs the
    unmerged PEFT model and reads the LoRA weights in place. Either way every optimizer step is seen.
    """

    def __init__(self, settings, seed: int, max_prompt_length: int):
        self.g = settings
        self.seed = seed
        self.max_prompt_length = max_prompt_length
        self.engine = None
        self.shadow = None

    def _rollout_seed(self, global_step: int) -> int:
        """The rollout's sampling seed, from the optimizer step it is generated for: a run resumed
        from a checkpoint draws the same completions as one never interrupted (a call counter would
        restart at 0). One rollout per optimizer step (TRL's steps_per_generation = accumulation)."""
        return self.seed + 7919 * (global_step + 1)

    def __call__(self, prompts: list, trainer) -> dict:
        from tinyreason.generation import GenerationEngine, eos_token_ids_of

        tokenizer = trainer.processing_class
        prompt_ids = tokenizer(text=list(prompts))["input_ids"]
        model = trainer.accelerator.unwrap_model(trainer.model)
        if self.g.merge_for_rollout and not _quantized(model):
            if self.shadow is None:
                self.shadow = MergedShadow(model)
            else:
                self.shadow.refresh()
        need = max(len(p) for p in prompt_ids) + self.g.max_completion_length
        if self.engine is None or self.engine.max_num_seqs < len(prompt_ids) or self.engine.max_model_len < need:
            # sized to the rollout (KV blocks for every completion at full length), so training keeps the rest
            self.engine = GenerationEngine(self.shadow.model if self.shadow else model, max_num_seqs=len(prompt_ids),
                                           max_model_len=max(need, self.max_prompt_length + self.g.max_completion_length))
            self.eos_ids = eos_token_ids_of(model, tokenizer)
        completion_ids = self.engine.generate(prompt_ids, self.g.max_completion_length, temperature=self.g.temperature,
                                              top_p=self.g.top_p, seed=self._rollout_seed(trainer.state.global_step),
                                              eos_token_ids=self.eos_ids)
        return {"prompt_ids": [list(p) for p in prompt_ids], "completion_ids": [list(c) for c in completion_ids],
                "logprobs": None}
