"""Token counting for traces, with a Hugging Face `tokenizer.json` (Rust `tokenizers`,
no transformers import). The default is the tests' tiny Llama, the model the live tests
serve; pass the serving model's folder to count in its tokens."""

from __future__ import annotations

import functools
import pathlib

DEFAULT_TOKENIZER = pathlib.Path(__file__).resolve().parent.parent / "models" / "tiny-llama"


class Tokenizer:
    def __init__(self, folder: str | pathlib.Path):
        from tokenizers import Tokenizer as _Rust

        path = pathlib.Path(folder)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"no tokenizer.json at {path} (pass --tokenizer DIR, a Hugging Face model folder)")
        self.name = str(path)
        self._tok = _Rust.from_file(str(file))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_many(self, texts: list[str], chunk: int = 128) -> list[list[int]]:
        """Batch encoding (Rust threads); chunked so long traces do not hold every
        Encoding object, with its offsets, in memory at once."""
        out: list[list[int]] = []
        for start in range(0, len(texts), chunk):
            out += [e.ids for e in self._tok.encode_batch(texts[start:start + chunk], add_special_tokens=False)]
        return out

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self.encode(text))


@functools.lru_cache(maxsize=4)
def load_tokenizer(folder: str | None = None) -> Tokenizer:
    return Tokenizer(folder or DEFAULT_TOKENIZER)
