"""The check and prepare stages start fast: they import only what they use (no torch for `check`), and
prepare reads the CPU profile's GGUF tokenizer from a cache of plain tokenizer files after the first load."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, SMOLLM_MODEL, make_workdir, write_params


def test_check_stage_imports_neither_torch_nor_transformers(tmp_path):
    """Validating params and inputs needs no ML library: `python stages/check.py`'s whole import set, on the
    CPU profile (the shipped params with profile: cpu) in a scratch copy."""
    work = make_workdir(tmp_path)
    write_params(work, {"profile": "cpu"})
    probe = ("import runpy, sys\n"
             "try:\n    runpy.run_path('stages/check.py', run_name='__main__')\n"
             "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'trl', 'peft'}))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=work, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = proc.stdout.strip().splitlines()
    assert printed[0].startswith("check: params and inputs are valid") and printed[1:] == ["[]"]


def _probe_texts(tokenizer) -> dict:
    from tinyreason import prompts
    from tinyreason.config import PromptConfig

    texts = ["Natalia sold clips to 48 of her friends.", "<think>\n12 + 30 = 42\n</think>\n**Final Answer:** 42",
             "  unicode: é ü 北京 \\boxed{\\frac{1}{2}}"]
    return {"ids": [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts],
            "prompt": prompts.render_generation_prompt(tokenizer, PromptConfig(system="Be brief."), "2+2?"),
            "special": (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token, len(tokenizer))}


def test_gguf_tokenizer_cache_gives_the_same_tokenizer(tmp_path, monkeypatch):
    from transformers import modeling_gguf_pytorch_utils

    from tinyreason import modeling
    from tinyreason.config import ModelConfig

    monkeypatch.setenv(modeling.CACHE_ENV, str(tmp_path))
    cfg = ModelConfig(**SMOLLM_MODEL)
    parsed = _probe_texts(modeling.load_tokenizer(cfg))  # from the GGUF file; writes the cache
    (entry,) = (tmp_path / "tokenizers").iterdir()
    assert json.loads((entry / "tokenizer_config.json").read_text())

    def no_parsing(*args, **kwargs):
        raise AssertionError("the GGUF file was parsed again")

    monkeypatch.setattr(modeling_gguf_pytorch_utils, "load_gguf_checkpoint", no_parsing)
    assert _probe_texts(modeling.load_tokenizer(cfg)) == parsed


def test_unwritable_tokenizer_cache_still_loads(tmp_path, monkeypatch):
    from tinyreason import modeling
    from tinyreason.config import ModelConfig

    (tmp_path / "tokenizers").write_text("a file where the cache directory would be")
    monkeypatch.setenv(modeling.CACHE_ENV, str(tmp_path))
    tokenizer = modeling.load_tokenizer(ModelConfig(**SMOLLM_MODEL))
    assert tokenizer("2+2", add_special_tokens=False)["input_ids"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizers"]
