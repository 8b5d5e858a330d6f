"""`tinyreason export` (tinyreason/export.py) on the tiny random Llama: the merged export loads with plain
transformers and generates what base + adapter generates; bf16 weights; the model card's metrics,
intervals and cost; the hub push, mocked at its HTTP client; bad input as one line and no output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from huggingface_hub import ModelCard

from conftest import save_fresh_adapter, tiny_run_overrides, write_params
from tinyreason import cli, evaluation, export
from tinyreason.config import config_to_dict, load_config
from tinyreason.outputs import FILE_MODE


def _records(label, verdicts):
    return [{"model": label, "benchmark": "gsm8k", "id": f"p{i}", "sample": 0, "correct": bool(v), "formatted": True,
             "num_tokens": 5, "truncated": False} for i, v in enumerate(verdicts)]


SAMPLE_METRICS = evaluation.build_metrics({"base": _records("base", [1, 0, 0, 0, 1, 0, 0, 0, 0, 0]),
                                           "adapter": _records("adapter", [1, 1, 1, 1, 1, 0, 1, 1, 0, 0])}, samples=1)
SAMPLE_COST = {"wall_seconds": 812.5, "gpu_seconds": 812.5, "usd": 0.4514, "peak_memory_gib": 9.8,
               "device": "NVIDIA H100 80GB HBM3", "num_gpus": 1}


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir):
    """A pipeline workspace after train and evaluate: params, an adapter whose LoRA B is not zero (a
    fresh adapter is the identity, so the merge would not matter), and metrics files."""
    from safetensors.torch import load_file, save_file

    work = tmp_path_factory.mktemp("export-work")
    write_params(work, tiny_run_overrides(tiny_model_dir, evaluate={"max_new_tokens": 12}))
    adapter = work / "models" / "adapter"
    save_fresh_adapter(tiny_model_dir, adapter)
    weights = load_file(adapter / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(v.shape, generator=generator) * 0.2 if "lora_B" in k else v for k, v in weights.items()}
    save_file(weights, adapter / "adapter_model.safetensors")
    (work / "metrics").mkdir()
    (work / "metrics.json").write_text(json.dumps(SAMPLE_METRICS))
    (work / "metrics" / "train.json").write_text(json.dumps({"steps": 6, "final_train_loss": 1.25,
                                                             "best_eval_loss": 1.5, "cost": SAMPLE_COST}))
    (work / "metrics" / "evaluate.json").write_text(json.dumps({"cost": {**SAMPLE_COST, "wall_seconds": 95.0,
                                                                         "gpu_seconds": 95.0, "usd": 0.0528}}))
    (work / "metrics" / "prepare.json").write_text(json.dumps({"train": 18, "val": 6, "test": 4}))
    return work


def run(*args) -> int:
    return cli.main(["export", *map(str, args)])


def test_float32_export_loads_with_plain_transformers_and_generates_like_base_plus_adapter(work, tiny_model_dir,
                                                                                         tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "f32"
    assert run("--params", work / "params.yaml", "--dtype", "float32", "--out", out) == 0
    exported = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert exported.dtype == torch.float32 and tokenizer.chat_template
    settings = exported.generation_config
    assert settings.max_new_tokens == 12 and not settings.do_sample
    assert tokenizer.eos_token_id in settings.eos_token_id

    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) + "<think>\n"
               for q in ("What is 2 + 3?", "Tom has 4 apples and eats one. How many are left?")]
    tokenizer.padding_side = "left"
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                          str(work / "models" / "adapter"))
    with torch.no_grad():
        merged_tokens = exported.generate(**inputs)  # its own generation_config.json
        adapter_tokens = reference.generate(**inputs, generation_config=settings)
        base_tokens = base.generate(**inputs, generation_config=settings)
    assert merged_tokens.shape[1] > inputs["input_ids"].shape[1]
    assert torch.equal(merged_tokens, adapter_tokens)
    assert not torch.equal(merged_tokens, base_tokens)  # the adapter changed the model: the merge mattered


def test_default_export_writes_bf16_safetensors_tokenizer_and_card_in_one_rename(work):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    assert run("--params", work / "params.yaml") == 0
    out = work / "models" / "export"
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {FILE_MODE}  # readable by others, like any output
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
        assert not any("lora" in k for k in f.keys())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert sorted(p.name for p in out.parent.iterdir()) == ["adapter", "export"]  # no temporary left behind
    assert "+50.0 pts" in (out / "README.md").read_text()  # the card, from the workspace's metrics.json


def test_a_failed_export_leaves_the_previous_one_and_no_temporary(work, tmp_path, monkeypatch, capsys):
    import errno

    from transformers import PreTrainedModel

    def half_written(self, directory, **kwargs):
        (Path(directory) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "export"
    out.mkdir()
    (out / "README.md").write_text("the previous export\n")
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", half_written)
    assert run("--params", work / "params.yaml", "--out", out) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {out}: no space left on device")
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert [p.name for p in out.iterdir()] == ["README.md"]
    assert (out / "README.md").read_text() == "the previous export\n"


def test_model_card_has_metrics_with_intervals_cost_and_hub_metadata(work, tmp_path):
    cfg = load_config(write_params(tmp_path, {}))  # the seed recipe: a hub base model
    card = ModelCard(export.model_card(cfg, config_to_dict(cfg), work, "bfloat16", repo_id="me/tiny-reasoner"))
    assert card.data.base_model == "Qwen/Qwen2.5-1.5B-Instruct" and card.data.library_name == "transformers"
    assert "tinyreason" in card.data.tags and card.data.datasets is None  # a local training file: no hub dataset
    text = card.text
    assert "| gsm8k | 10 | 20.0% [5.7%, 51.0%] | 70.0% [39.7%, 89.2%] | +50.0 pts [+7.8, +73.3] | 0.0625 |" in text
    assert "95% Wilson interval" in text and "McNemar" in text
    assert "| train | NVIDIA H100 80GB HBM3 x 1 | 812.5 | 812.5 | $0.4514 |" in text
    assert "| evaluate | NVIDIA H100 80GB HBM3 x 1 | 95.0 | 95.0 | $0.0528 |" in text
    assert "18 training / 6 validation examples (subsampled and split with seed 3407)" in text
    assert "Source: `data/raw/gsm8k/train.jsonl`" in text
    assert "| train.lora.r | `16` |" in text and "| train.learning_rate | `0.0002` |" in text
    assert "final train loss 1.25, best eval loss 1.5" in text
    assert 'from_pretrained("me/tiny-reasoner")' in text and "+ '<think>\\n'" in text


def test_grpo_card_names_its_hub_dataset_and_rewards(tmp_path):
    cfg = load_config(write_params(tmp_path, {"train": {"method": "grpo", "grpo": {
        "train_path": "knoveleng/open-rs", "num_samples": 500}}}))
    card = ModelCard(export.model_card(cfg, config_to_dict(cfg), tmp_path, "bfloat16"))
    assert card.data.datasets == ["knoveleng/open-rs"] and "grpo" in card.data.tags
    assert "| train.grpo.reward_funcs | `[\"format\", \"accuracy\"]` |" in card.text
    assert "Source: `knoveleng/open-rs` (split `train`, revision `unpinned" in card.text and "500 problems" in card.text


def test_the_card_records_the_params_the_adapter_was_trained_with(work, tmp_path):
    """The train stage's models/adapter/params.json, not the params file as it is now."""
    adapter = tmp_path / "adapter"
    shutil.copytree(work / "models" / "adapter", adapter)
    trained = config_to_dict(load_config(work / "params.yaml"))
    trained["train"]["learning_rate"] = 0.005
    (adapter / "params.json").write_text(json.dumps(trained))
    assert run("--params", work / "params.yaml", "--adapter", adapter, "--out", tmp_path / "out") == 0
    assert "| train.learning_rate | `0.005` |" in (tmp_path / "out" / "README.md").read_text()


def test_model_card_without_metrics_says_not_evaluated(work, tmp_path):
    cfg = load_config(work / "params.yaml")
    text = export.model_card(cfg, config_to_dict(cfg), tmp_path, "float32")
    assert "Not evaluated (no metrics.json" in text and "Cost\n\nNot recorded" in text
    assert "Steps: 6 planned (train.max_steps; no metrics/train.json)" in text
    assert "base_model" not in text.split("---")[1]  # a local base directory is no hub id


def test_model_card_takes_the_license_from_a_local_base_card(work, tmp_path):
    cfg = load_config(work / "params.yaml")
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    trained = config_to_dict(cfg)
    trained["model"]["name_or_path"] = str(tmp_path)
    assert "license: apache-2.0" in export.model_card(cfg, trained, tmp_path, "float32")


@pytest.fixture
def hub(monkeypatch):
    """The hub client online with a token, its HTTP client answering from here: the requests it sent."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    sent = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        path = request.url.path
        if path == "/api/repos/create":
            return httpx.Response(200, json={"url": "https://huggingface.co/me/tiny-reasoner"})
        if path == "/api/validate-yaml":
            return httpx.Response(200, json={"errors": [], "warnings": []})
        if path.endswith("/preupload/main"):
            files = json.loads(request.content)["files"]
            # every file inline in the commit ("regular"), so the commit request holds the whole upload
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return httpx.Response(200, json={"files": modes})
        if path.endswith("/commit/main"):
            return httpx.Response(200, json={"commitUrl": "https://huggingface.co/me/tiny-reasoner/commit/abc",
                                             "commitOid": "abc"})
        return httpx.Response(404, json={"error": "not mocked"})

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    original = _http._GLOBAL_CLIENT_FACTORY
    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(answer),
                                                            event_hooks={"request": [_http.hf_request_event_hook]}))
    yield sent
    huggingface_hub.set_client_factory(original)


def test_push_to_hub_creates_the_repo_and_uploads_the_export_folder(work, tmp_path, hub, capsys):
    out = tmp_path / "pushed"
    assert run("--params", work / "params.yaml", "--out", out, "--push-to-hub", "me/tiny-reasoner", "--private") == 0
    assert "export: pushed to https://huggingface.co/me/tiny-reasoner/commit/abc" in capsys.readouterr().out
    by_path = {r.url.path: r for r in hub}
    created = json.loads(by_path["/api/repos/create"].content)
    assert created == {"name": "tiny-reasoner", "organization": "me", "visibility": "private"}
    assert by_path["/api/repos/create"].headers["authorization"] == "Bearer hf_test_token"
    commit = [json.loads(line) for line in by_path["/api/models/me/tiny-reasoner/commit/main"].content.splitlines()]
    uploaded = sorted(c["value"]["path"] for c in commit if c["key"] == "file")
    assert uploaded == sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in uploaded and "README.md" in uploaded
    assert 'from_pretrained("me/tiny-reasoner")' in (out / "README.md").read_text()


def test_push_without_a_token_fails_in_one_line_before_any_work(work, tmp_path, hub, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    out = tmp_path / "never"
    assert run("--params", work / "params.yaml", "--out", out, "--push-to-hub", "me/tiny-reasoner") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Hugging Face token (fix: `hf auth login`" in err
    assert not out.exists() and not hub


def test_push_offline_fails_in_one_line(work, tmp_path, capsys):
    # conftest sets HF_HUB_OFFLINE=1, as on this machine
    assert run("--params", work / "params.yaml", "--out", tmp_path / "never", "--push-to-hub", "me/x") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HF_HUB_OFFLINE is set (fix: unset it" in err


def test_missing_adapter_is_one_line_exit_2_and_no_output(tmp_path, tiny_model_dir, capsys, monkeypatch):
    write_params(tmp_path, tiny_run_overrides(tiny_model_dir))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: models/adapter/adapter_config.json not found (fix: run `dvc repro train` or pass "
                   "--adapter DIR)\n")
    assert not (tmp_path / "models").exists()


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--adapter", "--out", "--dtype", "--push-to-hub", "--private", "--params"):
        assert option in text


def test_the_card_records_model_and_dataset_revisions(tmp_path):
    cfg = load_config(write_params(tmp_path, {"model": {"revision": "0a1b2c3"}, "train": {"method": "grpo", "grpo": {
        "train_path": "knoveleng/open-rs", "hub_revision": "d4e5f6a"}}}))
    trained = config_to_dict(cfg)  # what the train stage writes to models/adapter/params.json
    assert trained["model"]["revision"] == "0a1b2c3" and trained["train"]["grpo"]["hub_revision"] == "d4e5f6a"
    text = ModelCard(export.model_card(cfg, trained, tmp_path, "bfloat16")).text
    assert "Qwen/Qwen2.5-1.5B-Instruct @ 0a1b2c3" in text
    assert "Source: `knoveleng/open-rs` (split `train`, revision `d4e5f6a`)" in text
    unpinned = load_config(write_params(tmp_path, {"train": {"method": "grpo", "grpo": {"train_path": "knoveleng/open-rs"}}}))
    text = ModelCard(export.model_card(unpinned, config_to_dict(unpinned), tmp_path, "bfloat16")).text
    assert "revision `unpinned: the newest at training time`" in text and " @ " not in text.split("## Usage")[0]
