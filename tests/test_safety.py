"""Safe loading: no remote code unless params turn it on, weights only from safetensors
(a model or adapter with only pickled weights is refused), and the container runs as non-root.

(The HF_TOKEN "no secret written" check runs on full pipelines: tests/test_determinism.py and
tests/test_reliability.py, which already pay for those runs.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO, shipped_params_path

from tinyreason.config import ModelConfig
from tinyreason.errors import TinyReasonError


def local_model(model_dir: Path, **kw) -> ModelConfig:
    return ModelConfig(name_or_path=str(model_dir), gguf_file=None, load_in_4bit=False, dtype="float32", **kw)


@pytest.fixture
def captured(monkeypatch):
    """from_pretrained of AutoModelForCausalLM / AutoTokenizer record their kwargs and still load."""
    import transformers

    calls = {}
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained.__func__

        def spy(klass, *args, _real=real, _name=cls.__name__, **kwargs):
            calls[_name] = kwargs
            return _real(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    return calls


def test_remote_code_off_and_safetensors_only_by_default(tiny_model_dir, captured):
    from tinyreason import modeling

    cfg = local_model(tiny_model_dir)
    modeling.load_tokenizer(cfg)
    modeling.load_base_model(cfg)
    assert captured["AutoTokenizer"]["trust_remote_code"] is False
    assert captured["AutoModelForCausalLM"]["trust_remote_code"] is False
    assert captured["AutoModelForCausalLM"]["use_safetensors"] is True


def test_params_default_keeps_remote_code_off():
    from tinyreason.config import load_config

    assert load_config(shipped_params_path()).model.trust_remote_code is False
    assert ModelConfig().trust_remote_code is False


def test_remote_code_only_when_params_turn_it_on(tiny_model_dir, captured):
    from tinyreason import modeling

    cfg = local_model(tiny_model_dir, trust_remote_code=True)
    modeling.load_tokenizer(cfg)
    modeling.load_base_model(cfg)
    assert captured["AutoTokenizer"]["trust_remote_code"] is True
    assert captured["AutoModelForCausalLM"]["trust_remote_code"] is True


def test_pickle_only_model_dir_is_refused(tmp_path, tiny_model_dir, captured):
    """A directory with pytorch_model.bin and no safetensors: one-line error, nothing unpickled."""
    import torch
    from safetensors.torch import load_file

    from tinyreason import modeling

    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors":
            (model_dir / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(tiny_model_dir / "model.safetensors"), model_dir / "pytorch_model.bin")

    loads = []
    real_load = torch.load
    torch.load = lambda *a, **k: loads.append(a) or real_load(*a, **k)
    try:
        with pytest.raises(TinyReasonError) as err:
            modeling.load_base_model(local_model(model_dir))
    finally:
        torch.load = real_load
    message = str(err.value)
    assert "\n" not in message
    assert "model.name_or_path" in message and "pytorch_model.bin" in message and "safetensors" in message
    assert "fix:" in message
    assert loads == [] and "AutoModelForCausalLM" not in captured


def test_adapter_with_only_pickled_weights_is_refused(tmp_path, tiny_model_dir):
    from tinyreason import modeling

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(TinyReasonError, match="adapter_model.safetensors missing"):
        modeling.load_adapter_model(local_model(tiny_model_dir), adapter)


def test_container_runs_as_non_root():
    dockerfile = REPO / "docker" / "Dockerfile"
    if not dockerfile.is_file():
        pytest.skip("no docker/Dockerfile")
    users = re.findall(r"^\s*USER\s+(\S+)", dockerfile.read_text(), flags=re.MULTILINE)
    assert users, "docker/Dockerfile has no USER line: the container would run as root"
    final = users[-1].split(":")[0]
    assert final not in ("root", "0"), f"the last USER is {users[-1]}"
    if final.startswith("${") or final.startswith("$"):  # an ARG: its default must not be root
        name = final.strip("${}")
        default = re.search(rf"^\s*ARG\s+{name}=(\S+)", dockerfile.read_text(), flags=re.MULTILINE)
        assert default and default.group(1) not in ("0", "root"), f"ARG {name} defaults to root"
