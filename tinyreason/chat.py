"""`tinyreason chat` (interactive, streamed) and `tinyreason solve` (one-shot, scriptable).

Both load the base model from the params' model section (`--profile cpu` resolves the CPU smoke
profile) plus the trained LoRA adapter (default: the pipeline's `models/adapter/` next to the params
file; `--base-only` skips it), prime the assistant turn with `<think>\\n` exactly as evaluation does
(prompts.render_generation_prompt), and split the completion into reasoning and final answer
(grading.extract_final_answer, with \\boxed{} as the fallback, as grading does).

chat: each question is a fresh conversation (unless --history); tokens stream as they are generated
(transformers TextIteratorStreamer, generate in a worker thread); reasoning is dim and the final
answer bold on a terminal, plain text when piped. `exit`, `quit`, Ctrl-D or Ctrl-C at the prompt
quit with exit code 0; Ctrl-C while the model writes stops that answer and returns to the prompt.

solve: prints the final answer only (one line per question), `--show-reasoning` the trace too,
`--json` one {question, reasoning, answer} object per line. `-` reads questions from stdin (one a
line). Greedy by default (reproducible). Exit 1 when a question got no final answer (said on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tinyreason import paths
from tinyreason.errors import TinyReasonError
from tinyreason.formats import FINAL_ANSWER, FINAL_ANSWER_MARKER, THINK_CLOSE
from tinyreason.grading import extract_answer

# Lower-cased start of the final-answer marker: streaming holds text back from here on.
FINAL_ANSWER_START = FINAL_ANSWER_MARKER.rstrip(":*").lower()
QUIT_WORDS = {"exit", "quit", "/exit", "/quit", ":q"}
NEW_WORDS = {"/new", "/reset"}
CHAT_DEFAULTS = {"temperature": 0.1, "max_new_tokens": 1024}
SOLVE_DEFAULTS = {"temperature": 0.0, "max_new_tokens": 1024}


# ---------------------------------------------------------------------------------------------
# Completion -> reasoning + answer


@dataclass(frozen=True)
class Solution:
    question: str
    reasoning: str
    answer: str | None
    completion: str  # the raw generated text (after the `<think>\n` prime)
    new_tokens: int = 0
    seconds: float = 0.0


def split_reasoning(completion: str) -> str:
    """The trace: text before `</think>`; without one, text before the last `**Final Answer:**`."""
    if THINK_CLOSE in completion:
        return completion.split(THINK_CLOSE, 1)[0].strip()
    lowered = completion.lower()
    cut = lowered.rfind(FINAL_ANSWER_START)
    return (completion[:cut] if cut >= 0 else completion).strip()


def why_no_answer(truncated_at: int | None, suggest_trace: bool = True) -> str:
    """One line for a completion without a final answer: cut off by the budget, or the model stopped."""
    if truncated_at:
        return (f"generation hit --max-new-tokens {truncated_at} before {FINAL_ANSWER_MARKER} "
                "(fix: raise --max-new-tokens)")
    return (f"the model stopped without writing {FINAL_ANSWER_MARKER} (an untrained base model often ignores the "
            "format" + ("; see the trace with --show-reasoning)" if suggest_trace else ")"))


# ---------------------------------------------------------------------------------------------
# Streaming display


def _held_back(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that could still grow into one of the markers."""
    lowered = text.lower()
    longest = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(lowered)), longest, -1):
            if marker.startswith(lowered[-n:]):
                longest = n
                break
    return longest


class StreamView:
    """Prints streamed text: reasoning dim until `</think>` (or the final-answer marker), then
    holds the short answer section back and ends with a bold `Final Answer: ...` line.

    Styles come from rich, which writes plain text when the console is not a terminal."""

    MARKERS = (THINK_CLOSE, FINAL_ANSWER_START)

    def __init__(self, console, answer_format: str = FINAL_ANSWER):
        self.console = console
        self.answer_format = answer_format
        self.pending = ""  # reasoning text not yet printed (may hold a partial marker)
        self.tail = ""  # everything from the first marker on
        self.in_answer = False
        self.printed_any = False
        self.text = ""

    def _emit(self, text: str) -> None:
        if text:
            self.console.print(text, style="dim", end="", markup=False, highlight=False)
            self.printed_any = True

    def feed(self, chunk: str) -> None:
        self.text += chunk
        if self.in_answer:
            self.tail += chunk
            return
        self.pending += chunk
        lowered = self.pending.lower()
        hits = [i for i in (lowered.find(m) for m in self.MARKERS) if i >= 0]
        if hits:
            cut = min(hits)
            self._emit(self.pending[:cut].rstrip())
            self.tail, self.pending, self.in_answer = self.pending[cut:], "", True
            return
        keep = _held_back(self.pending, self.MARKERS)
        ready = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        self._emit(ready)

    def finish(self, *, interrupted: bool = False, truncated_at: int | None = None) -> str | None:
        """Flush, print the final answer (or why there is none); returns the answer."""
        self._emit(self.pending.rstrip())
        self.pending = ""
        answer = extract_answer(self.text, self.answer_format)
        if self.printed_any:
            self.console.print()
        if answer is not None:
            self.console.print()
            self.console.print("Final Answer: ", style="bold", end="", markup=False, highlight=False)
            self.console.print(answer, style="bold green", markup=False, highlight=False)
            return answer
        rest = self.tail.replace(THINK_CLOSE, "").strip()
        if rest:
            self.console.print(rest, markup=False, highlight=False)
        if interrupted:
            self.console.print("[interrupted]", style="yellow", markup=False, highlight=False)
        else:
            self.console.print(f"(no final answer: {why_no_answer(truncated_at, suggest_trace=False)})", style="yellow", markup=False,
                               highlight=False)
        return None


# ---------------------------------------------------------------------------------------------
# Config, adapter, model


def resolve_config(params: str | Path, profile: str | None = None, model: str | None = None):
    """Load the params file (optionally another profile), then apply a --model override."""
    from tinyreason.config import load_config

    cfg = load_config(params, profile=profile)
    if model:
        # Another model: its own weights, so the profile's GGUF file name no longer applies.
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=model, gguf_file=None,
                                                                 revision=None))
    return cfg


def resolve_adapter(cfg, params: str | Path, adapter: str | None, base_only: bool,
                    profile_given: bool = False) -> Path | None:
    """The adapter directory to load (None with --base-only), checked before any model loads."""
    from tinyreason.modeling import check_adapter_matches

    if base_only:
        return None
    if adapter is not None:
        path = Path(adapter)
        if not (path / paths.ADAPTER_CONFIG).is_file():
            raise TinyReasonError(f"--adapter {path}: no LoRA adapter there ({paths.ADAPTER_CONFIG} missing) (fix: "
                                  "pass the directory the train stage wrote, models/adapter, or use --base-only)")
    else:
        path = Path(params).parent / paths.ADAPTER
        if not (path / paths.ADAPTER_CONFIG).is_file():
            raise TinyReasonError(f"{path}: no trained adapter yet (fix: train one with `dvc repro train`, or on "
                                  "CPU `dvc exp run -S profile=cpu`; or pass --adapter PATH, or --base-only to "
                                  "use the base model)")
    params_json = path / "params.json"
    if params_json.is_file():
        try:
            trained = json.loads(params_json.read_text())
        except ValueError:
            raise TinyReasonError(f"{params_json}: not valid JSON (fix: retrain, or delete the file to skip "
                                  "the base-model check)") from None
        trained_model = (trained.get("model") or {}).get("name_or_path")
        trained_profile = trained.get("profile")
        if (trained_model and trained_model != cfg.model.name_or_path and not profile_given
                and trained_profile and trained_profile != cfg.profile):
            raise TinyReasonError(f"{path}: adapter was trained with profile {trained_profile!r} on "
                                  f"{trained_model!r}, but params use profile {cfg.profile!r} (fix: pass "
                                  f"--profile {trained_profile})")
    check_adapter_matches(path, cfg.model)
    return path


def trained_prompt(cfg, adapter: Path | None):
    """The chat format the adapter was trained on, as its params.json records it: train.grpo.prompt after
    GRPO, prepare.prompt after SFT (the recorded text, should params.yaml have changed since). Without an
    adapter or a record: the params' prepare.prompt."""
    from tinyreason.config import PromptConfig

    record = adapter / "params.json" if adapter is not None else None
    trained = json.loads(record.read_text()) if record is not None and record.is_file() else {}
    train = trained.get("train") or {}
    section = (train.get("grpo") or {}) if train.get("method") == "grpo" else (trained.get("prepare") or {})
    name = section.get("prompt")
    recorded = (trained.get("prompts") or {}).get(name)
    if isinstance(recorded, dict):
        known = {f.name for f in dataclasses.fields(PromptConfig)}
        return PromptConfig(**{k: v for k, v in recorded.items() if k in known})
    return cfg.prompts.get(name) or cfg.prompt(cfg.prepare.prompt)


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_model(cfg, adapter: Path | None):
    """Tokenizer and model (adapter merged in), in eval mode."""
    from tinyreason import modeling

    _quiet_transformers()
    tokenizer = modeling.load_tokenizer(cfg.model)
    if adapter is None:
        model = modeling.load_base_model(cfg.model)
    else:
        try:
            model = modeling.load_adapter_model(cfg.model, adapter, merge=True)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise TinyReasonError(f"{adapter}: cannot load this LoRA adapter onto {cfg.model.name_or_path!r} "
                                  f"({first}) (fix: retrain it, or use --base-only)") from None
    model.eval()
    return tokenizer, model


class Solver:
    """Question -> prompt -> generate, with the settings fixed at construction."""

    def __init__(self, model, tokenizer, prompt, *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int):
        from transformers import GenerationConfig

        from tinyreason.generation import eos_token_ids_of

        self.model, self.tokenizer, self.prompt = model, tokenizer, prompt
        self.max_new_tokens, self.seed = max_new_tokens, seed
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
                   {"do_sample": False}
        # A fresh config: the model's own sampling defaults (top_k, repetition_penalty) do not leak in,
        # so results depend only on these flags, as in evaluation.
        self.generation_config = GenerationConfig(max_new_tokens=max_new_tokens, **sampling,
                                                  eos_token_id=eos_token_ids_of(model, tokenizer),
                                                  pad_token_id=tokenizer.pad_token_id)

    def prompt_text(self, question: str, history: list[tuple[str, str]] = ()) -> str:
        from tinyreason.prompts import render_generation_prompt

        return render_generation_prompt(self.tokenizer, self.prompt, question, history)

    def _inputs(self, text: str):
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return {k: v.to(self.model.device) for k, v in inputs.items()}

    def solve(self, question: str) -> Solution:
        import torch
        from transformers import set_seed

        set_seed(self.seed)
        inputs = self._inputs(self.prompt_text(question))
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=self.generation_config)
        new = out[0][inputs["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return Solution(question, split_reasoning(text), extract_answer(text, self.prompt.answer_format), text,
                        len(new), time.perf_counter() - start)

    def stream(self, question: str, view: StreamView, history: list[tuple[str, str]] = ()) -> Solution:
        """Generate in a worker thread, feeding text to `view` as it comes. Ctrl-C stops generation
        (the partial answer is kept; _Interrupted is raised after the worker has finished). While
        streaming, Ctrl-C only sets a flag: a KeyboardInterrupt raised inside the console's
        rendering could leave it half-way through a write."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        inputs = self._inputs(self.prompt_text(question, history))
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        clean_up_tokenization_spaces=False)
        stop = threading.Event()
        result: dict = {}

        class StopOnCtrlC(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        def work():
            try:
                with torch.inference_mode():
                    result["ids"] = self.model.generate(
                        **inputs, generation_config=self.generation_config, streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([StopOnCtrlC()]))
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                result["error"] = exc
                streamer.end()

        start = time.perf_counter()
        worker = threading.Thread(target=work, name="tinyreason-generate", daemon=True)
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) if main else None
        worker.start()
        try:
            for chunk in streamer:  # ends when generate does: at EOS, its budget, or Ctrl-C's stop
                view.feed(chunk)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        worker.join()
        interrupted = stop.is_set()
        if "error" in result:
            raise result["error"]
        ids = result.get("ids")
        new_tokens = int(ids.shape[1] - inputs["input_ids"].shape[1]) if ids is not None else 0
        answer = view.finish(interrupted=interrupted,
                             truncated_at=self.max_new_tokens if new_tokens >= self.max_new_tokens else None)
        solution = Solution(question, split_reasoning(view.text), answer, view.text, new_tokens,
                            time.perf_counter() - start)
        if interrupted:
            raise _Interrupted(solution)
        return solution


class _Interrupted(Exception):
    def __init__(self, solution: Solution):
        super().__init__("interrupted")
        self.solution = solution


def _build_solver(args, defaults: dict, console_err) -> Solver:
    cfg = resolve_config(args.params, args.profile, args.model)
    if args.prompt is not None and args.prompt not in cfg.prompts:
        raise TinyReasonError(f"--prompt {args.prompt}: not defined under prompts in {args.params} "
                              f"(fix: one of {', '.join(cfg.prompts)})")
    adapter = resolve_adapter(cfg, args.params, args.adapter, args.base_only, profile_given=args.profile is not None)
    prompt = cfg.prompts[args.prompt] if args.prompt is not None else trained_prompt(cfg, adapter)
    what = cfg.model.name_or_path + (f" + adapter {adapter}" if adapter else " (base model only)")
    console_err.print(f"loading {what} ...", style="dim", markup=False, highlight=False)
    tokenizer, model = load_model(cfg, adapter)
    temperature = defaults["temperature"] if args.temperature is None else args.temperature
    max_new_tokens = defaults["max_new_tokens"] if args.max_new_tokens is None else args.max_new_tokens
    return Solver(model, tokenizer, prompt, temperature=temperature, top_p=args.top_p,
                  max_new_tokens=max_new_tokens, seed=cfg.seed if args.seed is None else args.seed)


def _consoles():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True), Console(stderr=True, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# chat


def _read_question(console, tty: bool) -> str | None:
    """One line from the user; None at end of input."""
    try:
        if tty:
            return console.input("[bold cyan]>>> [/]")
        line = sys.stdin.readline()
        return line if line else None
    except EOFError:
        return None


def run_chat(args) -> int:
    out, err = _consoles()
    solver = _build_solver(args, CHAT_DEFAULTS, err)
    tty = sys.stdin.isatty()
    if tty:
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
        out.print(f"Ask a math question (temperature {args.temperature if args.temperature is not None else CHAT_DEFAULTS['temperature']}, "
                  f"up to {solver.max_new_tokens} new tokens). `exit`, `quit` or Ctrl-D to leave"
                  + (", /new to forget the conversation." if args.history else "; each question starts afresh."),
                  style="dim", markup=False)
    history: list[tuple[str, str]] = []
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    while True:
        try:
            line = _read_question(out, tty)
        except KeyboardInterrupt:
            out.print()
            return 0
        if line is None:
            if tty:
                out.print()
            return 0
        question = line.strip()
        if not question:
            continue
        if question.lower() in QUIT_WORDS:
            return 0
        if question.lower() in NEW_WORDS:
            history.clear()
            out.print("(new conversation)", style="dim", markup=False)
            continue
        view = StreamView(out, solver.prompt.answer_format)
        try:
            solution = solver.stream(question, view, history if args.history else ())
        except _Interrupted as stopped:
            solution = stopped.solution
        if args.history:
            history.append((question, solution.completion))
        if tty and solution.seconds > 0:
            out.print(f"({solution.new_tokens} tokens, {solution.new_tokens / solution.seconds:.1f} tokens/s)",
                      style="dim", markup=False)
        out.print()


# ---------------------------------------------------------------------------------------------
# solve


def _questions(items: list[str]) -> list[str]:
    questions: list[str] = []
    for item in items:
        if item == "-":
            questions.extend(line.strip() for line in sys.stdin if line.strip())
        elif item.strip():
            questions.append(item.strip())
    return questions


def _solve_with_spinner(solver: Solver, question: str, err, index: int, total: int) -> Solution:
    """solver.solve, with a spinner on stderr while it runs when stderr is a terminal: a long
    generation (up to --max-new-tokens, minutes on a CPU) otherwise looks hung. The spinner is
    transient (erased when the answer is ready), so the terminal ends up as without it; stdout is
    never touched, and piped or redirected stderr gets nothing (no control codes in logs)."""
    if not err.is_terminal:
        return solver.solve(question)
    which = f" question {index}/{total}" if total > 1 else ""
    label = f"solving{which} (up to {solver.max_new_tokens} new tokens) ..."
    with err.status(label, spinner="dots"):
        return solver.solve(question)


def run_solve(args) -> int:
    out, err = _consoles()
    questions = _questions(args.questions)
    if not questions:
        raise TinyReasonError("solve: no question given (fix: tinyreason solve \"What is 2+3?\", or pipe one "
                              "question per line into `tinyreason solve -`)")
    solver = _build_solver(args, SOLVE_DEFAULTS, err)
    missing = 0
    for index, question in enumerate(questions, 1):
        solution = _solve_with_spinner(solver, question, err, index, len(questions))
        if solution.answer is None:
            missing += 1
            where = f"question {index}" if len(questions) > 1 else "the question"
            truncated = solver.max_new_tokens if solution.new_tokens >= solver.max_new_tokens else None
            err.print(f"no final answer for {where}: {why_no_answer(truncated)}", style="yellow", markup=False,
                      highlight=False)
        if args.json:
            print(json.dumps({"question": question, "reasoning": solution.reasoning, "answer": solution.answer},
                             ensure_ascii=False), flush=True)
        elif args.show_reasoning:
            if len(questions) > 1:
                out.print(f"Q{index}: {question}", style="bold cyan", markup=False)
            out.print(solution.reasoning, style="dim", markup=False)
            if solution.answer is not None:
                out.print("Final Answer: ", style="bold", end="", markup=False)
                out.print(solution.answer, style="bold green", markup=False)
            out.print()
        elif solution.answer is not None or len(questions) > 1:
            print(solution.answer or "", flush=True)  # one line per question, even when empty
    return 1 if missing else 0


# ---------------------------------------------------------------------------------------------
# argparse


def _add_common(parser: argparse.ArgumentParser, defaults: dict) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--profile", default=None,
                        help="profile to use instead of the file's `profile:` (e.g. cpu: SmolLM2-135M, offline)")
    parser.add_argument("--model", default=None, metavar="NAME_OR_PATH",
                        help="override model.name_or_path (a hub id or a local directory)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--adapter", default=None, metavar="PATH",
                       help="LoRA adapter directory (default: models/adapter next to the params file)")
    which.add_argument("--base-only", action="store_true", help="use the base model without an adapter")
    parser.add_argument("--prompt", default=None, metavar="NAME",
                        help="a chat format of prompts.yaml (default: the adapter's own, train.grpo.prompt after GRPO, "
                             "prepare.prompt after SFT)")
    parser.add_argument("--temperature", type=_non_negative, default=None,
                        help=f"sampling temperature, 0 = greedy (default: {defaults['temperature']})")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: 1.0)")
    parser.add_argument("--max-new-tokens", type=_positive, default=None,
                        help=f"generation budget per answer (default: {defaults['max_new_tokens']})")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling (default: params seed)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0 <= value <= 5:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 5, got {text!r}")
    return value


def add_parser(subparsers) -> None:
    """Register `tinyreason chat` and `tinyreason solve`."""
    chat = subparsers.add_parser(
        "chat", help="talk to the trained model: streamed reasoning, then the final answer",
        description="Interactive math chat with base model + trained LoRA adapter. Reasoning streams as it is "
                    "generated; each question is a fresh conversation unless --history. exit/quit/Ctrl-D leave.")
    _add_common(chat, CHAT_DEFAULTS)
    chat.add_argument("--history", action="store_true",
                      help="keep earlier questions and answers in the conversation (/new clears it)")
    chat.set_defaults(func=run_chat)

    solve = subparsers.add_parser(
        "solve", help="answer questions non-interactively (final answer only; --json for scripts)",
        description="Solve each question and print its final answer, one line per question. Greedy by default "
                    "(reproducible). Exit code 1 if a question got no final answer.")
    solve.add_argument("questions", nargs="+", metavar="QUESTION", help="a question, or - to read one per stdin line")
    _add_common(solve, SOLVE_DEFAULTS)
    shown = solve.add_mutually_exclusive_group()
    shown.add_argument("--show-reasoning", action="store_true", help="print the reasoning trace before the answer")
    shown.add_argument("--json", action="store_true", help="print {question, reasoning, answer} as JSON lines")
    solve.set_defaults(func=run_solve)
