"""Conversation context of a chat-templated prompt: parse the turns, render them, and
derive context features (earlier turns' lengths, turn index).

Training/serving consistency: at serving time the controller sees the chat-templated text
(earlier turns included). Training renders each ShareGPT pair's history + prompt with the
Llama-3 chat template (`render_chat`) and computes every feature from that text with the
same `parse_chat` the predictor uses, so both paths share one code path. `parse_chat`
understands Llama-3, ChatML (Qwen, SmolLM2) and Llama-2/Mistral `[INST]` templates;
plain text is one user turn without history.
"""

from __future__ import annotations

import re

import numpy as np

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"

_INST = re.compile(r"\[INST\](.*?)\[/INST\](.*?)(?=\[INST\]|$)", re.S)
_LLAMA2_SYS = re.compile(r"<<SYS>>.*?<</SYS>>", re.S)
_BOS_EOS = re.compile(r"</?s>|<\|begin_of_text\|>|<\|end_of_text\|>")


def _role(name: str) -> str:
    name = name.lower()
    if name in ("user", "human"):
        return USER
    if name in ("assistant", "gpt", "model"):
        return ASSISTANT
    return SYSTEM


_LLAMA3_ROLE = re.compile(r"(\w+)<\|end_header_id\|>")
_CHATML_ROLE = re.compile(r"(\w+)\n?")


def _split_turns(text: str, start: str, role_re: re.Pattern, end: str) -> list[tuple[str, str]]:
    """Turns by plain string splitting (a regex over a 200 kB conversation costs ~6 ms)."""
    turns = []
    for seg in text.split(start)[1:]:
        m = role_re.match(seg)
        if m is None:
            continue
        cut = seg.find(end, m.end())
        turns.append((_role(m.group(1)), seg[m.end():cut if cut >= 0 else len(seg)].strip()))
    return turns


def parse_chat(text: str) -> list[tuple[str, str]]:
    """(role, content) turns of a chat-templated prompt; a trailing empty assistant turn
    (the generation prompt) is dropped. Plain text -> [("user", text)]."""
    if "<|start_header_id|>" in text:
        turns = _split_turns(text, "<|start_header_id|>", _LLAMA3_ROLE, "<|eot_id|>")
    elif "<|im_start|>" in text:
        turns = _split_turns(text, "<|im_start|>", _CHATML_ROLE, "<|im_end|>")
    elif "[INST]" in text and "[/INST]" in text:
        turns = []
        for user, answer in _INST.findall(text):
            turns.append((USER, _LLAMA2_SYS.sub("", user).strip()))
            answer = _BOS_EOS.sub("", answer).strip()
            if answer:
                turns.append((ASSISTANT, answer))
    else:
        return [(USER, text)]
    while turns and turns[-1][0] == ASSISTANT and not turns[-1][1]:
        turns.pop()
    return turns or [(USER, text)]


def render_chat(history: list[tuple[str, str]], prompt: str) -> str:
    """Llama-3 chat template of history + the new user prompt, with the generation prompt."""
    parts = ["<|begin_of_text|>"]
    for role, content in [*history, (USER, prompt)]:
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>")
    parts.append(f"<|start_header_id|>{ASSISTANT}<|end_header_id|>\n\n")
    return "".join(parts)


def split_prompt(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(last user message, earlier turns) of a chat-templated prompt."""
    turns = parse_chat(text)
    for i in range(len(turns) - 1, -1, -1):
        if turns[i][0] == USER and turns[i][1]:
            return turns[i][1], turns[:i]
    return text, []


def previous_answer(history: list[tuple[str, str]]) -> str:
    """The last assistant turn of the earlier turns ("" if none)."""
    return next((c for r, c in reversed(history) if r == ASSISTANT), "")


CONTEXT_NAMES = ("log_user_turns_before", "has_history", "log_prev_answer_tokens",
                 "log_mean_answer_chars", "log_max_answer_chars", "log_history_chars",
                 "log_prev_user_chars", "log_answers_before")


def context_features(prompts: list[str], histories: list[list[tuple[str, str]]],
                     encoding: str = "llama3") -> np.ndarray:
    """[n, len(CONTEXT_NAMES)] float32 features of the earlier turns.

    The previous answer's length is counted in the target's tokenizer (quicktok llama3): it
    is the strongest single predictor of the next answer's length. Older answers only
    enter through character counts (cheap at serving time).
    """
    import quicktok

    prev = [next((c for r, c in reversed(h) if r == ASSISTANT), None) for h in histories]
    enc = quicktok.get_encoding(encoding)
    # enc.count per text, single-threaded: count_batch starts a thread pool on every call,
    # which stalls a serving process for up to hundreds of ms on a busy 2-core host.
    prev_tokens = {i: enc.count(a) for i, a in enumerate(prev) if a}
    out = np.zeros((len(prompts), len(CONTEXT_NAMES)), dtype=np.float32)
    for i, hist in enumerate(histories):
        users = [len(c) for r, c in hist if r == USER]
        answers = [len(c) for r, c in hist if r == ASSISTANT]
        out[i, 0] = np.log1p(len(users))
        out[i, 1] = float(bool(hist))
        out[i, 2] = np.log1p(prev_tokens.get(i, 0))
        out[i, 3] = np.log1p(np.mean(answers)) if answers else 0.0
        out[i, 4] = np.log1p(max(answers)) if answers else 0.0
        out[i, 5] = np.log1p(sum(len(c) for _, c in hist))
        out[i, 6] = np.log1p(users[-1]) if users else 0.0
        out[i, 7] = np.log1p(len(answers))
    return out
