"""The chat formats, in one place: question -> messages -> rendered prompt, and the SFT target.

A `PromptConfig` (from params.yaml) says what the system prompt is, how the question is wrapped,
how the assistant turn is primed (`<think>\n`) and how a worked answer ends. Rendering always goes
through the model tokenizer's own chat template, so the same code serves Qwen, SmolLM2, R1-distills.
"""

from __future__ import annotations

from tinyreason.config import PromptConfig
from tinyreason.formats import THINK_CLOSE


def build_messages(prompt: PromptConfig, question: str,
                   history: list[tuple[str, str]] | tuple = ()) -> list[dict[str, str]]:
    """System prompt (if any), the earlier turns of a conversation (`history`: question and the completion
    that followed the think prefix, as `tinyreason chat` keeps them), then the question."""
    messages = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system})
    for past_question, past_completion in history:
        messages.append({"role": "user", "content": prompt.user_template.format(question=past_question)})
        messages.append({"role": "assistant", "content": prompt.think_prefix + past_completion})
    messages.append({"role": "user", "content": prompt.user_template.format(question=question)})
    return messages


def render_generation_prompt(tokenizer, prompt: PromptConfig, question: str,
                             history: list[tuple[str, str]] | tuple = ()) -> str:
    """The text a model continues at evaluation (and in chat, after `history`'s turns): chat template +
    assistant header + think prefix."""
    text = tokenizer.apply_chat_template(build_messages(prompt, question, history), tokenize=False,
                                         add_generation_prompt=True)
    return text + prompt.think_prefix


def render_target(prompt: PromptConfig, reasoning: str, answer: str) -> str:
    """The assistant turn SFT teaches: `<think>\\n{reasoning}\\n</think>\\n**Final Answer:** {answer}`."""
    return (f"{prompt.think_prefix}{reasoning.strip()}\n{THINK_CLOSE}\n"
            f"{prompt.answer_template.format(answer=answer)}")


def render_sft_example(tokenizer, prompt: PromptConfig, question: str, reasoning: str,
                       answer: str) -> dict[str, str]:
    """Prompt/completion strings (TRL's prompt-completion format, so loss can skip the prompt).

    Both come from one chat-template rendering of the full conversation, split where the
    generation prompt ends, so training sees exactly the tokens evaluation will produce.
    """
    messages = build_messages(prompt, question)
    target = render_target(prompt, reasoning, answer)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": target}],
                                         tokenize=False)
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not full.startswith(head):
        raise ValueError("the chat template renders the prompt differently with and without the "
                         "assistant turn; cannot split prompt and completion")
    # The template closes the turn with an end-of-turn token then a newline; end on the token so
    # TRL does not append a second end-of-sequence marker.
    return {"prompt": head, "completion": full[len(head):].rstrip("\n"), "text": full.rstrip("\n")}
