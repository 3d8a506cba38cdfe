"""Frozen configuration records for every stage of the length model.

Units sit in field names (`_tokens`, `_s`, `_ms`, `_rps`). Every output folder gets the
resolved config as JSON (`save_config`), so a result can always be traced to its inputs.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

# Everything rebuilt by `python -m length_model prepare|train` lives here (git-ignored).
DEFAULT_WORK_DIR = "runs/length_model"
# Committed, small run-time artifact (trained head + card).
DEFAULT_ARTIFACT_DIR = str(pathlib.Path(__file__).resolve().parent / "artifacts")
# The same model plus a fine-tuned 4-layer MiniLM scorer: ranks better, costs about 2 ms
# more per request on one CPU thread (see its MODEL_CARD.md); not the controller's default.
FINETUNED_ARTIFACT_DIR = str(pathlib.Path(__file__).resolve().parent / "artifacts_finetuned")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How ShareGPT prompt/response pairs are extracted and split."""

    seed: int = 0  # split seed: same seed -> same split
    val_fraction: float = 0.1  # fraction of conversation groups in validation
    test_fraction: float = 0.1  # fraction of conversation groups in test
    min_response_tokens: int = 1  # pairs with shorter (empty) responses are dropped
    max_records: int = 0  # 0 = every decodable record of the file
    tokenizer_encoding: str = "llama3"  # quicktok encoding that counts response tokens


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """How a prompt becomes a feature vector (frozen MiniLM encoder)."""

    kind: str = "contextual"  # "contextual": MiniLM forward pass; "static": token-embedding mean
    head_tokens: int = 48  # encoder sees the first head_tokens ...
    tail_tokens: int = 16  # ... and the last tail_tokens of a long prompt
    static_max_tokens: int = 512  # "static" kind averages over at most this many tokens
    batch_size: int = 32
    quantize_int8: bool = False  # dynamic int8 Linear layers (faster on CPU, slightly different)
    num_threads: int = 2

    @property
    def max_length_tokens(self) -> int:
        return self.head_tokens + self.tail_tokens + 2  # + [CLS] and [SEP]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One head trained on cached embeddings."""

    head: str = "rank"  # "poster": 20-bucket classifier; "rank": log-length regression + ranking
    seed: int = 0
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dropout: float = 0.2
    hidden_sizes: tuple[int, ...] = (256, 128)
    num_buckets: int = 20
    rank_loss_weight: float = 1.0  # weight of the pairwise logistic ranking loss ("rank" head)
    max_train_pairs: int = 0  # 0 = all training pairs (subsample otherwise, seeded)
    use_surface_features: bool = True  # append prompt-length features to the embedding
    patience_epochs: int = 6  # early stop when validation Kendall tau stops improving
    num_threads: int = 1  # torch threads; >1 is slower on a busy 2-core host (spin-waits)


# The poster's set-up (issue item 2a): embedding only, 20-bucket cross-entropy.
POSTER_TRAIN = TrainConfig(head="poster", use_surface_features=False, epochs=30)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Open-loop serving benchmark of the micro-batching predictor."""

    rate_rps: float = 64.0
    duration_s: float = 20.0
    max_batch_size: int = 16
    max_wait_ms: float = 1.0  # micro-batch gathering window after the first request
    seed: int = 0


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(path: pathlib.Path, **configs: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: to_dict(v) for k, v in configs.items()}, indent=2) + "\n")


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a config, ignoring unknown keys (older artifacts) and restoring tuples."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key in names:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)
