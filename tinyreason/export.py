"""`tinyreason export`: base model + trained LoRA adapter -> one merged model that loads with plain
`transformers` (no PEFT), in models/export/: safetensors weights (bfloat16 by default), the tokenizer with
its chat template, a generation_config.json carrying evaluation's settings, and a model card (README.md:
recipe, data, params, metrics with 95% intervals, cost). `--push-to-hub REPO` then uploads the folder.

Paths default to the pipeline's, next to the params file: models/adapter in, models/export out, the card
read from metrics.json and metrics/{prepare,train,evaluate}.json (a missing file: "not evaluated").
"""

from __future__ import annotations

import json
from pathlib import Path

from tinyreason import paths
from tinyreason.config import RunConfig, config_to_dict, load_config
from tinyreason.errors import TinyReasonError
from tinyreason.paths import ADAPTER_CONFIG

DTYPES = ("bfloat16", "float16", "float32")
TRAIN_PARAMS = ("method", "max_steps", "learning_rate", "lr_scheduler_type", "warmup_steps",
                "per_device_train_batch_size", "gradient_accumulation_steps", "optim", "max_length", "speed")
GRPO_PARAMS = ("num_generations", "max_completion_length", "temperature", "beta", "loss_type", "scale_rewards",
               "reward_funcs", "reward_weights", "stop_at_step")


def run_export(args) -> int:
    cfg = load_config(args.params)
    root = Path(args.params).parent
    adapter = Path(args.adapter) if args.adapter else root / paths.ADAPTER
    out = Path(args.out) if args.out else root / paths.EXPORT
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise TinyReasonError(f"{adapter / ADAPTER_CONFIG} not found (fix: run `dvc repro train` or pass "
                              "--adapter DIR)")
    if args.push_to_hub:
        check_hub_access(args.push_to_hub)  # before minutes of merging, not after
    export_model(cfg, adapter, out, args.dtype, root, repo_id=args.push_to_hub)
    if args.push_to_hub:
        print(f"export: pushed to {push_to_hub(out, args.push_to_hub, args.private)}")
    return 0


def export_model(cfg: RunConfig, adapter: Path, out: Path, dtype: str, root: Path,
                 repo_id: str | None = None) -> None:
    """Merge `adapter` into the base of cfg.model and write the export folder `out` in one rename."""
    import dataclasses

    import torch

    from tinyreason import modeling
    from tinyreason.outputs import FILE_MODE, atomic_directory

    card = model_card(cfg, _trained_params(adapter) or config_to_dict(cfg), root, dtype, repo_id)
    tokenizer = modeling.load_tokenizer(cfg.model)
    # The merge runs in float32 on an unquantized base, whatever model.load_in_4bit says: merging into
    # NF4 weights would round W + BA back to the 4-bit grid (not the model evaluate scored, which is
    # the adapter merged into the unquantized base too), and one rounding to `dtype` at the end loses
    # less than merging in bf16.
    full = dataclasses.replace(cfg.model, load_in_4bit=False, dtype="float32")
    model = modeling.load_adapter_model(full, adapter, merge=True).to(getattr(torch, dtype))
    model.generation_config = generation_config(cfg, model, tokenizer)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)  # safetensors: transformers 5 writes no other format
        tokenizer.save_pretrained(tmp)  # with the chat template
        (tmp / "README.md").write_text(card)
        for file in tmp.iterdir():  # transformers writes shards 0600 (through mkstemp): an export is to share
            file.chmod(FILE_MODE)
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(f"export: {out} ({dtype}, {model.num_parameters() / 1e6:.0f}M parameters, {size / 2**30:.2f} GiB): "
          f"{cfg.model.name_or_path} + {adapter} merged")


def generation_config(cfg: RunConfig, model, tokenizer):
    """Evaluation's settings as the model's defaults. A fresh config: the base's own defaults (Qwen's
    sample, with top_k and a repetition penalty) are not what evaluate ran."""
    from transformers import GenerationConfig

    from tinyreason.generation import eos_token_ids_of

    e = cfg.evaluate
    sampling = e.temperature > 0
    # top_k 0: nucleus sampling only, as evaluation samples
    extra = dict(temperature=e.temperature, top_p=e.top_p, top_k=0) if sampling else {}
    return GenerationConfig(max_new_tokens=e.max_new_tokens, do_sample=sampling,
                            bos_token_id=model.generation_config.bos_token_id,
                            eos_token_id=eos_token_ids_of(model, tokenizer),  # e.g. <|im_end|> ends a turn
                            pad_token_id=tokenizer.pad_token_id, **extra)


def _trained_params(adapter: Path) -> dict | None:
    """The resolved params the adapter was trained with (the train stage's params.json), if any."""
    path = adapter / "params.json"
    return _read_json(path) if path.is_file() else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise TinyReasonError(f"{path}: not valid JSON (fix: rerun the stage that writes it, or delete it)") from None


# ---------------------------------------------------------------------------------------------
# Model card


def _hub_id(spec: str | None) -> str | None:
    """`spec` when it names a hub repo (the card's metadata must not point at a local path)."""
    from tinyreason.data import looks_like_local_path

    if not spec or spec.startswith(("pip:", "~")) or looks_like_local_path(spec):
        return None
    return spec


def _base_license(model: dict) -> str | None:
    """The base model's license, when its card is on this machine (a local directory or the hub cache)."""
    from huggingface_hub import ModelCard, try_to_load_from_cache

    location = Path(model["name_or_path"])
    readme = location / "README.md" if location.is_dir() else None
    if readme is None and _hub_id(model["name_or_path"]):
        cached = try_to_load_from_cache(model["name_or_path"], "README.md", revision=model.get("revision"))
        readme = Path(cached) if isinstance(cached, str) else None
    if readme is None or not readme.is_file():
        return None
    try:
        return ModelCard.load(readme).data.license
    except ValueError:  # a card without valid front matter: license unknown
        return None


def _percent(x: float) -> str:
    return f"{x:.1%}"


def _accuracy(s: dict | None) -> str:
    if s is None:
        return "-"
    return f"{_percent(s['accuracy'])} [{_percent(s['accuracy_ci95_low'])}, {_percent(s['accuracy_ci95_high'])}]"


def _metrics_section(metrics: dict | None, cfg: RunConfig) -> list[str]:
    if not metrics:
        return ["Not evaluated (no metrics.json: run `dvc repro evaluate`, then export again)."]
    lines = ["| benchmark | n | base | this model | difference | p |", "|---|---:|---:|---:|---:|---:|"]
    sampled = []
    for bench, entry in metrics.items():
        paired = entry.get("adapter_vs_base")
        diff, p = "-", "-"
        if paired:
            diff = (f"{paired['difference'] * 100:+.1f} pts [{paired['ci_low'] * 100:+.1f}, "
                    f"{paired['ci_high'] * 100:+.1f}]")
            p = f"{paired['p_value']:.3g}"
        n = (entry.get("adapter") or entry.get("base") or {}).get("n", "-")
        lines.append(f"| {bench} | {n} | {_accuracy(entry.get('base'))} | {_accuracy(entry.get('adapter'))} "
                     f"| {diff} | {p} |")
        at_k = {k: v for k, v in (entry.get("adapter") or {}).items() if k.startswith(("mean_at_", "pass_at_"))}
        if at_k:
            sampled.append(f"- {bench}: " + ", ".join(f"{k.replace('_at_', '@')} {_percent(v)}"
                                                      for k, v in at_k.items()))
    e = cfg.evaluate
    lines += ["", "Accuracy of the first sample per problem, with its 95% Wilson interval; difference: this model "
                  "minus the base on the same problems, with its 95% Newcombe paired interval and the exact McNemar "
                  f"p-value. Generation: max_new_tokens {e.max_new_tokens}, "
                  + (f"temperature {e.temperature}, top_p {e.top_p}." if e.temperature > 0 else "greedy.")]
    return lines + (["", "Sampled k times per problem (this model):", *sampled] if sampled else [])


def _cost_section(root: Path) -> list[str]:
    rows = []
    for stage, path in (("train", paths.TRAIN_METRICS), ("evaluate_base", paths.EVALUATE_BASE_METRICS),
                        ("evaluate", paths.EVALUATE_METRICS)):
        cost = (_read_json(root / path) or {}).get("cost")
        if cost:
            rows.append(f"| {stage} | {cost.get('device')} x {cost.get('num_gpus')} | {cost.get('wall_seconds')} "
                        f"| {cost.get('gpu_seconds')} | ${cost.get('usd')} |")
    if not rows:
        return ["Not recorded (no metrics/train.json or metrics/evaluate.json)."]
    return ["| stage | device x GPUs | wall seconds | GPU seconds | cost |", "|---|---|---:|---:|---:|", *rows]


def _usage_section(name: str, prompt: dict) -> list[str]:
    """A plain-transformers snippet that renders the prompt as evaluation does (prompts.py)."""
    system = f'{{"role": "system", "content": {prompt["system"]!r}}}, ' if prompt["system"] else ""
    template = prompt["user_template"]
    user = "question" if template == "{question}" else f"{template!r}.format(question=question)"
    prime = f" + {prompt['think_prefix']!r}" if prompt["think_prefix"] else ""
    return [
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'model = AutoModelForCausalLM.from_pretrained("{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        'question = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell?"',
        f'messages = [{system}{{"role": "user", "content": {user}}}]',
        f"prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True){prime}",
        'inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)',
        "output = model.generate(**inputs)  # generation_config.json: the evaluation settings",
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))', "```", "",
        f"The answer ends with `{prompt['answer_template'].format(answer='...')}`.",
    ]


def _recipe_section(trained: dict, base: str, prompt_name: str, root: Path) -> list[str]:
    train = trained["train"]
    # what defines the trained model (evaluate, cost and the unused chat formats do not)
    recorded = {k: trained[k] for k in ("profile", "seed", "model", "prepare", "train")}
    recorded["prompts"] = {prompt_name: trained["prompts"][prompt_name]}
    grpo = train["method"] == "grpo"
    params = ([("train." + k, train[k]) for k in TRAIN_PARAMS]
              + [("train.lora." + k, v) for k, v in train["lora"].items()]
              + ([("train.grpo." + k, train["grpo"][k]) for k in GRPO_PARAMS] if grpo else [])
              + [("model.load_in_4bit", trained["model"]["load_in_4bit"]), ("seed", trained["seed"])])
    result = _read_json(root / paths.TRAIN_METRICS) or {}
    steps = (f"- Steps: {result['steps']}" if "steps" in result else
             f"- Steps: {train['max_steps']} planned (train.max_steps; no metrics/train.json)")
    steps += "".join(f", {key.replace('_', ' ')} {result[key]}" for key in
                     ("final_train_loss", "best_eval_loss", "final_reward") if result.get(key) is not None)
    return [
        f"- Method: {'GRPO (TRL GRPOTrainer)' if grpo else 'supervised fine-tuning (TRL SFTTrainer)'} of a LoRA "
        f"adapter on `{base}`, profile `{trained['profile']}`", steps, "",
        "| param | value |", "|---|---|", *(f"| {k} | `{json.dumps(v)}` |" for k, v in params), "",
        "<details><summary>Params of the training run (resolved)</summary>", "", "```json",
        json.dumps(recorded, indent=2, sort_keys=True), "```", "", "</details>",
    ]


def _data_section(trained: dict, source: str, prompt_name: str, root: Path) -> list[str]:
    prepare, grpo = trained["prepare"], trained["train"]["grpo"]
    seed = trained["seed"]
    if trained["train"]["method"] == "grpo" and grpo["train_path"]:
        where, rows = grpo, f"{grpo['num_samples'] or 'every'} problems (sampled with seed {seed})"
    else:
        report = _read_json(root / paths.PREPARE_METRICS) or {}
        where = prepare
        rows = (f"{report['train']} training / {report['val']} validation examples" if "train" in report else
                f"{prepare['num_samples']} examples, {prepare['val_fraction']:.0%} held out for validation")
        rows += f" (subsampled and split with seed {seed})"
    hub = ""
    if _hub_id(source):
        hub = (f" (split `{where['hub_split']}`" + (f", config `{where['hub_config']}`" if where["hub_config"] else "")
               + f", revision `{where.get('hub_revision') or 'unpinned: the newest at training time'}`)")
    return [f"- Source: `{source}`{hub}", f"- {rows}, chat format `{prompt_name}`"]


def model_card(cfg: RunConfig, trained: dict, root: Path, dtype: str, repo_id: str | None = None) -> str:
    """README.md of the export: hub metadata (front matter), usage, recipe, data, metrics, cost.
    trained: the resolved params the adapter was trained with (config_to_dict's layout); root: where
    metrics.json and metrics/ are."""
    from huggingface_hub import ModelCard, ModelCardData

    train, model = trained["train"], trained["model"]
    method = train["method"]
    grpo = method == "grpo"
    source = (train["grpo"]["train_path"] if grpo else None) or trained["prepare"]["train_path"]
    prompt_name = train["grpo"]["prompt"] if grpo else trained["prepare"]["prompt"]
    data = ModelCardData(base_model=_hub_id(model["name_or_path"]), library_name="transformers",
                         pipeline_tag="text-generation", license=_base_license(model),
                         datasets=[source] if _hub_id(source) else None,
                         tags=["tinyreason", "lora", "merged", method, "math", "reasoning"])
    base = model["name_or_path"] + (f" ({model['gguf_file']})" if model.get("gguf_file") else "")
    base += f" @ {model['revision']}" if model.get("revision") else ""
    name = repo_id or paths.EXPORT.as_posix()
    title = repo_id.split("/")[-1] if repo_id else f"{Path(model['name_or_path']).name}, tinyreason {method}"
    body = [
        f"# {title}", "",
        f"`{base}` fine-tuned with LoRA by tinyreason ({method.upper()}), the adapter merged into the "
        f"weights, saved in {dtype}: it loads with plain `transformers`, no PEFT needed.", "",
        "## Usage", "", *_usage_section(name, trained["prompts"][prompt_name]), "",
        "## Recipe", "", *_recipe_section(trained, base, prompt_name, root), "",
        "## Data", "", *_data_section(trained, source, prompt_name, root), "",
        "## Evaluation", "", *_metrics_section(_read_json(root / paths.METRICS), cfg), "",
        "## Cost", "", *_cost_section(root), "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


# ---------------------------------------------------------------------------------------------
# Hub


def check_hub_access(repo_id: str) -> None:
    """A valid repo id, online, and a token: each checked before any work, as one line."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise TinyReasonError(f"--push-to-hub {repo_id}: not a hub repo id (fix: pass USER/NAME or ORG/NAME)") from None
    if constants.is_offline_mode():
        raise TinyReasonError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set (fix: unset it when online, or export "
                              "without --push-to-hub and upload later with `hf upload REPO models/export`)")
    if get_token() is None:
        raise TinyReasonError(f"--push-to-hub {repo_id}: no Hugging Face token (fix: `hf auth login`, or set "
                              "HF_TOKEN to a token with write access)")


def push_to_hub(folder: Path, repo_id: str, private: bool) -> str:
    """Create the model repo (kept if it exists) and upload the export folder as one commit; its URL."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="tinyreason export")
    except (HfHubHTTPError, httpx.HTTPError, ConnectionError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise TinyReasonError(f"--push-to-hub {repo_id}: upload failed ({first}) (fix: check the token's write "
                              f"access and the network; the export is in {folder}, upload it with "
                              f"`hf upload {repo_id} {folder}`)") from None
    return commit.commit_url


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="merge the trained LoRA adapter into the base model (models/export), optionally push it",
        description="Base model (model.* in the params) + LoRA adapter, merged into one safetensors model that "
                    "loads with plain transformers, with its tokenizer, generation config (evaluation's settings) "
                    "and a model card (recipe, data, params, metrics with 95% intervals, cost).")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml); the other paths "
                                                           "default to the pipeline's, next to it")
    p.add_argument("--adapter", default=None, metavar="DIR", help="LoRA adapter directory (default: models/adapter)")
    p.add_argument("--out", default=None, metavar="DIR", help="export directory, replaced (default: models/export)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="weight dtype (default: bfloat16)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                   help="then upload the export to this hub model repo (needs a token: `hf auth login`)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.set_defaults(func=run_export)

