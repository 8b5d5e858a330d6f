"""params.yaml -> small frozen dataclasses, validated with one-line errors.

Nothing else in tinyreason reads YAML. `load_config(path)` resolves the active profile, then
builds the typed config. A profile (`profiles.<name>`) supplies values only for keys the user left
at their shipped value (the dataclass defaults below, which are the seeded recipe): a key set in
params.yaml or with `dvc exp run -S` keeps the user's value, and is validated like any other
(`_apply_profile`). A wrong type, a value out of range or an unknown key raises `ConfigError` with one line
that names the key and says how to fix it.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tinyreason import benchmarks
from tinyreason.errors import ConfigError
from tinyreason.formats import ANSWER_FORMATS, FINAL_ANSWER, FINAL_ANSWER_MARKER, THINK_OPEN
from tinyreason.rewards import REWARDS

log = logging.getLogger(__name__)

LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _range(lo=None, hi=None, *, lo_open=False, choices=None, **kw):
    """Field metadata: numeric bounds or allowed values, checked by `_build`."""
    return dict(lo=lo, hi=hi, lo_open=lo_open, choices=choices, **kw)


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "Qwen/Qwen2.5-1.5B-Instruct"
    # GGUF file inside name_or_path (e.g. the CPU profile's SmolLM2); `pip:<dist>` as name_or_path
    # means "the directory of the installed pip distribution <dist>".
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    load_in_4bit: bool = True
    bnb_4bit_quant_type: str = field(default="nf4", metadata=_range(choices=("nf4", "fp4")))
    bnb_4bit_use_double_quant: bool = True
    # auto: bf16 where the GPU supports it, else fp16; fp32 on CPU.
    dtype: str = field(default="auto", metadata=_range(choices=("auto", "bfloat16", "float16", "float32")))
    attn_implementation: str = field(default="sdpa", metadata=_range(choices=("sdpa", "eager", "flash_attention_2")))


@dataclass(frozen=True)
class PromptConfig:
    """One chat format: how a question becomes messages and how a worked answer is written."""

    system: str | None = None
    user_template: str = "{question}"
    # Primes the assistant turn at evaluation; training targets start with it too.
    think_prefix: str = f"{THINK_OPEN}\n"
    answer_template: str = f"{FINAL_ANSWER_MARKER} {{answer}}"
    # How answers in this format are graded: final_answer (seed normalisation), boxed (math-verify).
    answer_format: str = field(default=FINAL_ANSWER, metadata=_range(choices=ANSWER_FORMATS))


@dataclass(frozen=True)
class PrepareConfig:
    # A local JSONL file (question/answer with '#### N'), or a hub dataset id such as openai/gsm8k.
    train_path: str = "data/raw/gsm8k/train.jsonl"
    hub_config: str = "main"
    hub_split: str = "train"
    hub_revision: str | None = None  # a hub dataset's commit, branch or tag (null: the newest)
    num_samples: int = field(default=2000, metadata=_range(1))
    val_fraction: float = field(default=0.1, metadata=_range(0.0, 1.0, lo_open=True))
    prompt: str = FINAL_ANSWER


@dataclass(frozen=True)
class LoraSettings:
    r: int = field(default=16, metadata=_range(1, 1024))
    alpha: int = field(default=32, metadata=_range(1))
    dropout: float = field(default=0.0, metadata=_range(0.0, 1.0))
    target_modules: list[str] = field(default_factory=lambda: list(LORA_PROJECTIONS))



# Experiment trackers train.report_to may name: transformers' report_to integrations we document
# (tests/test_trackers.py checks transformers knows each). dvclive is ours (tinyreason/tracking.py).
TRACKERS = ("dvclive", "wandb", "mlflow", "tensorboard", "trackio")


@dataclass(frozen=True)
class GrpoSettings:
    """train.method=grpo: TRL GRPOTrainer + LoRA (the Tina recipe). Used only when method is grpo."""

    # Training problems: null -> the prepared GSM8K split (data/prepared/train.jsonl); else a local
    # JSONL (GSM8K question/answer '#### N', or MATH-style problem/solution/answer) or a hub dataset id
    # (knoveleng/open-rs, agentica-org/DeepScaleR-Preview-Dataset, ...).
    train_path: str | None = None
    hub_config: str | None = None
    hub_split: str = "train"
    hub_revision: str | None = None  # a hub dataset's commit, branch or tag (null: the newest)
    num_samples: int | None = field(default=None, metadata=_range(1))  # None: every row
    # A training problem that is also a test-benchmark problem is an error; true drops it instead.
    drop_test_overlap: bool = False
    prompt: str = "boxed"  # a key of `prompts`; its answer_format is what the accuracy reward grades
    max_prompt_length: int = field(default=512, metadata=_range(16))  # longer prompts are dropped
    max_completion_length: int = field(default=3584, metadata=_range(1))
    num_generations: int = field(default=4, metadata=_range(2))
    temperature: float = field(default=0.7, metadata=_range(0.0, 5.0, lo_open=True))
    top_p: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    beta: float = field(default=0.04, metadata=_range(0.0))  # KL coefficient (0: no reference pass)
    epsilon: float = field(default=0.2, metadata=_range(0.0, 1.0, lo_open=True))
    # grpo: per-sequence length normalisation (TRL 0.15, Tina); dr_grpo: global constant; dapo/bnpo: tokens.
    loss_type: str = field(default="grpo", metadata=_range(choices=("grpo", "dr_grpo", "dapo", "bnpo")))
    # group: divide advantages by the group's reward std (GRPO); none: Dr.GRPO; batch: PPO-lite.
    scale_rewards: str = field(default="group", metadata=_range(choices=("group", "batch", "none")))
    mask_truncated_completions: bool = False
    # Reward functions (names: rewards.REWARDS) and their weights, same order. Lists, so an override
    # replaces them whole. Tina: format 1 + accuracy (or cosine) 2.
    reward_funcs: list[str] = field(default_factory=lambda: ["format", "accuracy"])
    reward_weights: list[float] = field(default_factory=lambda: [1.0, 2.0])
    # Cosine length-scaled accuracy (Open-RS3): reward at length 0 -> at cosine_max_len characters.
    cosine_max_len: int = field(default=1000, metadata=_range(1))
    cosine_correct_short: float = 1.0
    cosine_correct_long: float = 0.5
    cosine_wrong_short: float = 0.0
    cosine_wrong_long: float = -0.5
    # overlong reward (DAPO's soft overlong punishment): 0 up to max_completion_length - overlong_cache
    # tokens, then down to -1 at max_completion_length. null: a fifth of max_completion_length (DAPO: 4k of 20k).
    overlong_cache: int | None = field(default=None, metadata=_range(1))
    # lr_scheduler_type=cosine_with_min_lr: the floor as a fraction of learning_rate.
    min_lr_rate: float = field(default=0.1, metadata=_range(0.0, 1.0))
    # The half-cosine trick: train.max_steps sets the schedule's length, training stops here (null:
    # at max_steps). Tina: max_steps ~2x the real stop, so the lr is cut about halfway down.
    stop_at_step: int | None = field(default=None, metadata=_range(1))
    # Rollouts (tinyreason/rollout.py): engine = tinyreason.generation's paged engine (CUDA); trl = TRL's
    # HF generate; auto = engine on CUDA, trl on CPU; vllm = TRL's vLLM integration (pip install vllm).
    rollout: str = field(default="auto", metadata=_range(choices=("auto", "engine", "trl", "vllm")))
    # rollout: vllm only. colocate: vLLM in the training process, taking vllm_gpu_memory_utilization of
    # the GPU; server: a separate `trl vllm-serve` process (its memory share is its own flag).
    vllm_mode: str = field(default="colocate", metadata=_range(choices=("colocate", "server")))
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata=_range(0.0, 1.0, lo_open=True))
    # Engine rollouts on a merged copy of the adapted weights (W + BA, refreshed every rollout) instead of
    # the unmerged LoRA model: no adapter matmuls per generated token. Off: the engine runs PEFT as is.
    merge_for_rollout: bool = True
    log_completions: bool = False
    # Training problems held out of training and scored every train.eval_steps with the evaluate stage's
    # grader (tinyreason/monitoring.py): held-out accuracy, format rate and length curves. 0: off.
    held_out: int = field(default=16, metadata=_range(0))
    # Any other GRPOConfig field (epsilon_high, num_iterations, ...), merged last; checked against
    # GRPOConfig by the check stage (tinyreason/training.py TRL_OWNED, GRPO_OWNED: keys set from params).
    trl_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SftSettings:
    """train.method=sft: settings of SFT alone."""

    # Any other SFTConfig field (neftune_noise_alpha, ...), merged last, checked like train.grpo.trl_args.
    trl_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    method: str = field(default="sft", metadata=_range(choices=("sft", "grpo")))
    lora: LoraSettings = field(default_factory=LoraSettings)
    per_device_train_batch_size: int = field(default=2, metadata=_range(1))
    per_device_eval_batch_size: int = field(default=8, metadata=_range(1))
    gradient_accumulation_steps: int = field(default=4, metadata=_range(1))
    max_steps: int = field(default=250, metadata=_range(1))
    learning_rate: float = field(default=2e-4, metadata=_range(0.0, 1.0, lo_open=True))
    lr_scheduler_type: str = field(default="linear", metadata=_range(
        choices=("linear", "cosine", "cosine_with_min_lr", "constant", "constant_with_warmup")))
    warmup_steps: int = field(default=50, metadata=_range(0))
    optim: str = field(default="adamw_8bit", metadata=_range(
        choices=("adamw_8bit", "paged_adamw_8bit", "adamw_torch", "adamw_torch_fused")))
    weight_decay: float = field(default=0.01, metadata=_range(0.0, 1.0))
    max_grad_norm: float = field(default=1.0, metadata=_range(0.0))
    eval_steps: int = field(default=50, metadata=_range(1))
    save_steps: int = field(default=50, metadata=_range(1))
    save_total_limit: int = field(default=3, metadata=_range(1))
    logging_steps: int = field(default=1, metadata=_range(1))
    max_length: int = field(default=2048, metadata=_range(16))
    packing: bool = False
    # Loss on the assistant turn only (TRL prompt-completion); false trains on the prompt too.
    completion_only_loss: bool = True
    gradient_checkpointing: bool = True
    # The settings TRL's SFTTrainer runs with (tinyreason/sft.py). faithful: the seed stack as configured
    # (QLoRA when model.load_in_4bit, micro-batch x accumulation as set). fast: the same optimisation
    # problem (effective batch, token-normalised loss, lr schedule, data order, seed) planned for speed:
    # micro-batch = effective batch, bf16 LoRA and no gradient checkpointing when GPU memory allows;
    # see `sft.plan_speed`.
    speed: str = field(default="fast", metadata=_range(choices=("faithful", "fast")))
    # Data-parallel GPUs (tinyreason/distributed.py): 1 = one process; 0 = every visible GPU; N > 1
    # relaunches the stage through `accelerate launch` on N GPUs with the same global batch
    # (per_device_train_batch_size x gradient_accumulation_steps is split over the GPUs).
    num_gpus: int = field(default=1, metadata=_range(0))
    # Where the training curves go (names: TRACKERS). dvclive is required: dvc.yaml's train outputs and
    # plots read dvclive/train. The others are passed to the trainer as transformers' report_to.
    report_to: list[str] = field(default_factory=lambda: ["dvclive"])
    sft: SftSettings = field(default_factory=SftSettings)
    grpo: GrpoSettings = field(default_factory=GrpoSettings)


@dataclass(frozen=True)
class BenchmarkRun:
    limit: int | None = field(default=None, metadata=_range(1))  # None: the whole benchmark
    prompt: str = FINAL_ANSWER  # a key of `prompts`
    # None: the vendored copy; else a local JSONL or a hub dataset id. A name that is not a registered
    # benchmark (a user's own test set) needs one; its results are labelled with that name.
    path: str | None = None
    # How answers are graded (None: the prompt's answer_format; GPQA: choice).
    answer_format: str | None = field(default=None, metadata=_range(choices=ANSWER_FORMATS))
    # The row fields holding the question and the answer in a user's own file (None: question, answer).
    question_key: str | None = None
    answer_key: str | None = None
    # Samples per problem for this benchmark (None: evaluate.samples). Small sets (AIME, AMC) need k
    # samples for a stable mean@k while large ones (MATH500) are run once.
    samples: int | None = field(default=None, metadata=_range(1))


@dataclass(frozen=True)
class EvaluateConfig:
    max_new_tokens: int = field(default=512, metadata=_range(1))
    # The most generation requests in flight at once, on every device: the engine's slots on CUDA,
    # HF generate's batch size on CPU. None: as many as the device allows (the engine's own limit).
    batch_size: int | None = field(default=None, metadata=_range(1))
    temperature: float = field(default=0.0, metadata=_range(0.0, 5.0))  # 0: greedy
    top_p: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    samples: int = field(default=1, metadata=_range(1))  # k > 1 needs temperature > 0
    evaluate_base: bool = True
    # trained: score the train stage's models/adapter (merged into the base). none: the base model
    # only (no adapter needed, e.g. a baseline before any training); needs evaluate_base: true.
    adapter: str = field(default="trained", metadata=_range(choices=("trained", "none")))
    # A benchmark set to null is off: an overlay (recipes/eval-tina.yaml, `dvc exp run -S`) can only
    # merge keys, never delete one, so null is how it drops a benchmark the base params list.
    benchmarks: dict[str, BenchmarkRun | None] = field(default_factory=lambda: {"gsm8k": BenchmarkRun()})

    def __post_init__(self):
        object.__setattr__(self, "benchmarks", {k: v for k, v in self.benchmarks.items() if v is not None})

    def spec_of(self, benchmark: str, prompt_format: str) -> "benchmarks.BenchmarkSpec":
        """How `benchmark` is read and graded: the registry's spec, or a user's own set under its name.
        prompt_format: the answer_format of the benchmark's prompt (the default for a user's set)."""
        run = self.benchmarks[benchmark]
        if benchmark in benchmarks.BENCHMARKS and run.path is None:
            return benchmarks.BENCHMARKS[benchmark]
        return benchmarks.user_spec(benchmark, run.path, run.answer_format or prompt_format, run.question_key,
                                    run.answer_key)

    def samples_of(self, benchmark: str) -> int:
        """Samples per problem for `benchmark`: its own `samples`, else evaluate.samples."""
        run = self.benchmarks.get(benchmark)
        return self.samples if run is None or run.samples is None else run.samples


@dataclass(frozen=True)
class CostConfig:
    usd_per_gpu_hour: float = field(default=2.0, metadata=_range(0.0))


@dataclass(frozen=True)
class RunConfig:
    profile: str = "seed"
    seed: int = field(default=3407, metadata=_range(0))
    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: dict[str, PromptConfig] = field(default_factory=lambda: {FINAL_ANSWER: PromptConfig()})
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    cost: CostConfig = field(default_factory=CostConfig)

    def prompt(self, name: str) -> PromptConfig:
        return self.prompts[name]


# ---------------------------------------------------------------------------------------------
# Building and validating


def _fail(source: str, key: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{source}: {key}: {message}")


def _convert(value: Any, tp, key: str, source: str, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key, source, meta)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _fail(source, key, f"expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, "
                               f"got {value!r}")
        return _build(tp, value, source, prefix=f"{key}.")
    if origin is dict:
        if not isinstance(value, dict):
            _fail(source, key, f"expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}", source, {}) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            _fail(source, key, f"expected a list, got {value!r} (fix: write it as [a, b, ...])")
        return [_convert(v, args[0], f"{key}[{i}]", source, {}) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            _fail(source, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(source, key, f"expected an integer, got {value!r}")
    elif tp is float:
        # YAML 1.1 reads `2e-4` (no dot) as a string: accept any numeric spelling.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                _fail(source, key, f"expected a number, got {value!r} (fix: e.g. {key.split('.')[-1]}: 2.0e-4)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(source, key, f"expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            _fail(source, key, f"expected a string, got {value!r} (fix: quote it)")
    _check_range(value, key, source, meta)
    return value


def _check_range(value, key: str, source: str, meta: dict) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        _fail(source, key, f"{value!r} is not one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        bound = f"> {lo}" if meta.get("lo_open") else f">= {lo}"
        _fail(source, key, f"{value!r} is out of range (fix: use a value {bound}"
                           + (f" and <= {hi})" if hi is not None else ")"))
    if hi is not None and value > hi:
        _fail(source, key, f"{value!r} is out of range (fix: use a value <= {hi})")


def _build(cls, data: dict, source: str, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"known keys: {', '.join(fields)}"
            _fail(source, f"{prefix}{key}", f"unknown key ({hint})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}", source, dict(f.metadata))
    return cls(**kwargs)


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_NO_DEFAULT = object()


def _shipped_value(path: tuple[str, ...]):
    """The typed default at `path` (e.g. ("train", "max_steps") -> 250): the value params.yaml ships
    for every key a profile overrides (tests/test_config.py checks that). _NO_DEFAULT if none."""
    def strip_optional(tp):
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            return next(a for a in typing.get_args(tp) if a is not type(None))
        return tp

    tp: Any = RunConfig
    value: Any = RunConfig()
    for key in path:
        if dataclasses.is_dataclass(tp):
            if key not in {f.name for f in dataclasses.fields(tp)}:
                return _NO_DEFAULT
            tp, value = strip_optional(typing.get_type_hints(tp)[key]), getattr(value, key)
        elif typing.get_origin(tp) is dict:
            tp = strip_optional(typing.get_args(tp)[1])
            value = value.get(key, _NO_DEFAULT) if isinstance(value, dict) else _NO_DEFAULT
        else:
            return _NO_DEFAULT
        if dataclasses.is_dataclass(tp) and not dataclasses.is_dataclass(value):
            value = tp()  # e.g. a benchmark absent from the defaults: BenchmarkRun's defaults
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _is_shipped(value, path: tuple[str, ...]) -> bool:
    shipped = _shipped_value(path)
    if shipped is _NO_DEFAULT:
        return False
    if isinstance(shipped, float) and isinstance(value, str):  # YAML 1.1 reads 2e-4 as a string
        try:
            value = float(value)
        except ValueError:
            return False
    if isinstance(value, bool) != isinstance(shipped, bool):  # `1` is not the shipped `true`
        return False
    return value == shipped


def _apply_profile(sections: dict, overlay: dict, name: str, path: tuple[str, ...] = ()) -> dict:
    """`overlay` (profiles.<name>) over `sections`, except where the user set a key.

    A user who sets a key gets that value, whatever the profile says: the profile fills a key only
    while it still holds its shipped value. Without this rule `-S profile=cpu -S train.max_steps=500`
    trained the profile's 4 steps, and `-S train.max_steps=0` slipped past the range check.
    """
    merged = dict(sections)
    for key, value in overlay.items():
        here, current = path + (key,), merged.get(key, _NO_DEFAULT)
        if isinstance(value, dict) and isinstance(current, dict):
            merged[key] = _apply_profile(current, value, name, here)
        elif current is _NO_DEFAULT or _is_shipped(current, here):
            merged[key] = value
        elif current != value:
            dotted = ".".join(here)
            log.info("profile %s: keeping %s=%r (set in params.yaml or with -S) over profiles.yaml %s.%s=%r",
                     name, dotted, current, name, dotted, value)
    return merged


def _check_cross_references(cfg: RunConfig, source: str) -> None:
    if cfg.prepare.prompt not in cfg.prompts:
        _fail(source, "prepare.prompt", f"{cfg.prepare.prompt!r} is not defined under prompts "
                                        f"(known: {', '.join(cfg.prompts)})")
    if not cfg.evaluate.benchmarks:
        _fail(source, "evaluate.benchmarks", "every benchmark is off (null) (fix: give at least one, "
                                             "e.g. gsm8k: {limit: null, prompt: final_answer})")
    for name, run in cfg.evaluate.benchmarks.items():
        if name not in benchmarks.BENCHMARKS and run.path is None:
            _fail(source, f"evaluate.benchmarks.{name}", benchmarks.unknown_benchmark_message(name))
        for key in ("question_key", "answer_key"):
            if getattr(run, key) is not None and run.path is None:
                _fail(source, f"evaluate.benchmarks.{name}.{key}", "only applies to a benchmark read from your "
                                                                   f"own file (fix: set evaluate.benchmarks.{name}"
                                                                   f".path, or remove {key})")
        if run.prompt not in cfg.prompts:
            _fail(source, f"evaluate.benchmarks.{name}.prompt",
                  f"{run.prompt!r} is not defined under prompts (known: {', '.join(cfg.prompts)})")
        if run.samples is not None and run.samples > 1 and cfg.evaluate.temperature == 0:
            _fail(source, f"evaluate.benchmarks.{name}.samples", f"{run.samples} samples need evaluate.temperature "
                                                                 "> 0 (greedy samples are identical) (fix: set a "
                                                                 "temperature, or samples: null)")
    if cfg.evaluate.adapter == "none" and not cfg.evaluate.evaluate_base:
        _fail(source, "evaluate.adapter", "none with evaluate.evaluate_base: false evaluates no model (fix: set "
                                          "evaluate.evaluate_base: true, or evaluate.adapter: trained)")
    if cfg.evaluate.samples > 1 and cfg.evaluate.temperature == 0:
        _fail(source, "evaluate.samples", "samples > 1 needs evaluate.temperature > 0 (greedy samples are identical)")
    if cfg.train.method == "grpo":
        _check_grpo(cfg, source)
    _check_report_to(cfg.train.report_to, source)
    if cfg.train.save_steps % cfg.train.eval_steps:
        _fail(source, "train.save_steps", "must be a multiple of train.eval_steps so the best checkpoint "
                                          "by eval loss is always saved")


def _check_report_to(names: list[str], source: str) -> None:
    for i, name in enumerate(names):
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, TRACKERS, n=1)
            fix = f"did you mean {close[0]}?" if close else f"use one of {', '.join(TRACKERS)}"
            _fail(source, f"train.report_to[{i}]", f"unknown tracker {name!r} (fix: {fix})")
        if name in names[:i]:
            _fail(source, f"train.report_to[{i}]", f"{name} is listed twice (fix: name each tracker once)")
    if "dvclive" not in names:
        # dvclive/train is a declared output of the train stage and dvc.yaml's plots read it.
        _fail(source, "train.report_to", f"[{', '.join(names)}] leaves out dvclive, which the train stage's "
                                         "dvclive/train output and dvc.yaml's plots need (fix: report_to: "
                                         f"[{', '.join(['dvclive', *names])}])")


def _check_grpo(cfg: RunConfig, source: str) -> None:
    t, g = cfg.train, cfg.train.grpo
    if g.prompt not in cfg.prompts:
        _fail(source, "train.grpo.prompt", f"{g.prompt!r} is not defined under prompts (known: {', '.join(cfg.prompts)})")
    if not g.reward_funcs:
        _fail(source, "train.grpo.reward_funcs", f"needs at least one reward (known: {', '.join(REWARDS)})")
    for i, name in enumerate(g.reward_funcs):
        if name not in REWARDS:
            _fail(source, f"train.grpo.reward_funcs[{i}]", f"unknown reward {name!r} (known: {', '.join(REWARDS)})")
    if len(g.reward_weights) != len(g.reward_funcs):
        _fail(source, "train.grpo.reward_weights", f"{len(g.reward_weights)} weight(s) for {len(g.reward_funcs)} "
                                                   "reward_funcs (fix: one weight per reward function)")
    batch = t.per_device_train_batch_size * t.gradient_accumulation_steps
    if batch % g.num_generations:
        _fail(source, "train.grpo.num_generations", f"{g.num_generations} must divide per_device_train_batch_size"
                                                    f" x gradient_accumulation_steps = {batch} (completions per step)")
    if g.overlong_cache is not None and g.overlong_cache >= g.max_completion_length:
        _fail(source, "train.grpo.overlong_cache", f"{g.overlong_cache} must be below train.grpo.max_completion_length="
                                                   f"{g.max_completion_length} (fix: e.g. a fifth of it, or null)")
    if g.stop_at_step is not None and g.stop_at_step > t.max_steps:
        _fail(source, "train.grpo.stop_at_step", f"{g.stop_at_step} is past train.max_steps={t.max_steps} "
                                                 "(fix: stop_at_step <= max_steps)")


# Chat formats and profiles live in files of their own beside params.yaml (stage deps in dvc.yaml, not
# params), so `dvc exp show` lists the knobs rather than template strings and every profile key. A params
# file may still hold `prompts:` / `profiles:` of its own: they are merged over the files'.
SIDE_FILES = ("prompts", "profiles")
REPO_ROOT = Path(__file__).resolve().parent.parent


def _with_side_files(raw: dict, directory: Path | None) -> dict:
    """`raw` with prompts.yaml and profiles.yaml merged under it: the copies in `directory` (the params
    file's) when there, else in the working directory (the repository root, where stages run; an
    installed package is not in the checkout), else beside this package's source."""
    raw = dict(raw)
    for key in SIDE_FILES:
        found = [Path(d) / f"{key}.yaml" for d in (directory, ".", REPO_ROOT) if d is not None]
        path = next((p for p in found if p.is_file()), found[-1])
        shipped = (_read_yaml(path) or {}) if path.is_file() else {}
        if not isinstance(shipped, dict):
            raise ConfigError(f"{path}: expected a mapping of names at the top level (fix: see git show HEAD:{key}.yaml)")
        if not isinstance(raw.get(key) or {}, dict):
            _fail("params.yaml", key, "expected a mapping of names")
        raw[key] = _deep_merge(shipped, raw.get(key) or {})
    return raw


def config_from_dict(raw: dict, source: str = "params.yaml", directory: Path | None = None) -> RunConfig:
    """Resolve the profile and validate. `source` names the file in error messages; `directory` holds the
    prompts.yaml / profiles.yaml to use (None: the repository's)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    raw = _with_side_files(raw, directory)
    profiles = raw.pop("profiles", {}) or {}
    profile = raw.get("profile", "seed")
    if profile != "seed":
        if profile not in profiles:
            _fail(source, "profile", f"{profile!r} has no section under profiles (profiles.yaml) "
                                     f"(fix: use one of seed, {', '.join(profiles)})")
        if not isinstance(profiles[profile], dict):
            _fail(source, f"profiles.{profile}", "expected a mapping of sections to override")
        raw = _apply_profile(raw, profiles[profile], profile)
    cfg = _build(RunConfig, raw, source)
    _check_cross_references(cfg, source)
    return cfg


def _read_yaml(path: Path):
    """A YAML file's data; a missing file or a syntax error is a one-line ConfigError."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (fix: run from the repository root)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None


def load_config(path: str | Path = "params.yaml", profile: str | None = None) -> RunConfig:
    """Validated config from a params file; `profile` overrides the file's `profile:` key."""
    path = Path(path)
    raw = _read_yaml(path)
    if profile is not None and isinstance(raw, dict):
        raw["profile"] = profile
    return config_from_dict(raw, str(path) if profile is None else f"{path} (--profile {profile})", path.parent)


def config_to_dict(cfg) -> dict:
    """The resolved config as plain data (saved next to the adapter as the exact params used)."""
    return dataclasses.asdict(cfg)


def load_params_mapping(path: str | Path) -> dict:
    """A params file as plain data, unvalidated ({} when it does not exist): the base a recipe overlay is
    merged over before `config_from_dict` validates the result."""
    path = Path(path)
    return (_read_yaml(path) or {}) if path.is_file() else {}


def committed_params_mapping(path: str | Path = "params.yaml") -> dict | None:
    """The params file as of the last commit (`git show HEAD:./<path>`), unvalidated; None outside a git
    checkout or when it is not committed. The difference with the file now is what `dvc exp run -S`
    (or an edit) changed."""
    import subprocess

    try:
        proc = subprocess.run(["git", "show", f"HEAD:./{path}"], capture_output=True, text=True, timeout=60)
        data = yaml.safe_load(proc.stdout) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------
# Recipe overlays (recipes/*.yaml): read here, like params.yaml; tinyreason.recipes turns them into commands

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def recipe_extends(directory: str | Path = RECIPES_DIR) -> dict[str, str | None]:
    """Every recipe file's name -> the recipe it `extends:` (None for a root)."""
    return {p.stem: (_read_yaml(p) or {}).get("extends") for p in sorted(Path(directory).glob("*.yaml"))}


def load_recipe_overlay(name: str, directory: str | Path = RECIPES_DIR) -> dict:
    """recipes/<name>.yaml as {name, description, source, params}, its `extends:` chain merged in (base
    first). The params are an overlay, validated only once merged over a params file."""
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(directory).glob("*.yaml"))
        raise ConfigError(f"recipe {name!r}: no {path} (known: {', '.join(known)})")
    raw = _read_yaml(path) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("params") or {}, dict):
        raise ConfigError(f"{path}: expected a mapping with a `params:` mapping (fix: see recipes/open-rs3.yaml)")
    params = raw.get("params") or {}
    if raw.get("extends"):
        params = _deep_merge(load_recipe_overlay(raw["extends"], directory)["params"], params)
    return {"name": name, "description": raw.get("description", ""), "source": raw.get("source", ""),
            "params": params}
