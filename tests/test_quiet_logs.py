"""A CPU run's log is not flooded. Loading the CPU profile's GGUF model draws no
"Converting and de-quantizing GGUF tensors" bar, and saving a LoRA adapter on it (what the train stage
does at every checkpoint) prints no PEFT "Could not find a config file" warning. Run in a fresh
interpreter, as a stage runs, with stderr captured as DVC captures it (not a terminal)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from conftest import REPO, SMOLLM_MODEL

SCRIPT = textwrap.dedent(f"""
    import logging, sys
    from peft import get_peft_model
    from tinyreason.config import LoraSettings, ModelConfig
    from tinyreason import modeling
    logging.basicConfig(level=logging.INFO)
    cfg = ModelConfig(**{SMOLLM_MODEL!r})
    model = get_peft_model(modeling.load_base_model(cfg, for_training=True), modeling.lora_config(LoraSettings()))
    model.save_pretrained(sys.argv[1])
    model.save_pretrained(sys.argv[1])  # a second checkpoint: repeated warnings would show twice
    print("saved")
""")


def test_gguf_load_and_adapter_save_print_no_bars_or_vocab_warnings(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "adapter")], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "saved" in proc.stdout, proc.stderr[-3000:]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert "de-quantizing GGUF tensors" not in proc.stderr, proc.stderr[-2000:]
    assert "Could not find a config file" not in proc.stderr, proc.stderr[-2000:]
