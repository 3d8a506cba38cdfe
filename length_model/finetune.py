"""Fine-tuned MiniLM length scorer: one more feature for the context model.

The frozen static embeddings only say which words a prompt has; a transformer fine-tuned on
answer lengths can read what is asked ("explain in detail" vs "answer yes or no") and what
the previous answer was doing (cut off mid code block?). Serving cost decides its size: the
first `layers` of all-MiniLM-L6-v2 over a short input, int8 in ONNX Runtime on one CPU
thread. Measured here (validation tau of the score alone / in the trees; ms per request at
the mean input of 53 tokens): 2 layers 0.40 / 0.538, about 1.1 ms; 4 layers 0.44 / 0.552,
about 2.1 ms; 6 layers 0.43 alone (not better than 4).

Input: [CLS] first `head_tokens` + last `tail_tokens` of the last user message [SEP] last
`prev_tokens` of the previous assistant answer [SEP]. Mean pooling, then a small MLP,
trained on the standardized log(1 + answer tokens) with the Huber loss. The token, position
and type embeddings stay frozen (serving takes the word table from the installed MiniLM
package), so the exported model (`encoder.onnx`) holds only the layers and the head.

The trees see this score as a feature, so on the training split it must be out of fold:
`python -m length_model.finetune` trains one model per fold (the context model's folds by
conversation group) plus one on all of train, exports each to int8 ONNX and scores with it
exactly as serving does. It needs torch, numpy, scipy, transformers, onnx and onnxruntime
(no project dependencies), so it runs on an accelerator machine as it is (`--device cuda`:
2.5 minutes for 4 layers on one H200, int8 scoring on 6 CPU processes included); on this
2-core CPU one fit of 2 layers takes about 35 minutes (14 ms per example and epoch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import numpy as np

ENCODER_FILE = "encoder.pt"  # trained weights (layers + head, fp16); not needed to serve
OOF_FILE = "encoder_oof.npz"
REPORT_FILE = "finetune.json"  # the fine-tuning config and figures
ONNX_FILE = "encoder.onnx"  # what serving runs (int8, ONNX Runtime)
_CHARS_PER_TOKEN = 8  # cut long texts before tokenizing (a token is rarely longer)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    layers: int = 4
    head_tokens: int = 64
    tail_tokens: int = 16
    prev_tokens: int = 24
    hidden: int = 256
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-4  # transformer layers
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    huber_delta: float = 1.0  # on the standardized log length
    seed: int = 0

    @property
    def width(self) -> int:
        return self.head_tokens + self.tail_tokens + self.prev_tokens + 3


def input_ids(tokenizer, prompts: list[str], prevs: list[str], cfg: FinetuneConfig) -> np.ndarray:
    """[n, cfg.width] int64 token ids (0-padded); training and serving build them here."""
    h, t, p = cfg.head_tokens, cfg.tail_tokens, cfg.prev_tokens
    cut = [s if len(s) <= (h + t) * _CHARS_PER_TOKEN
           else s[:h * _CHARS_PER_TOKEN] + " " + s[-t * _CHARS_PER_TOKEN:] for s in prompts]
    user = tokenizer(cut, add_special_tokens=False)["input_ids"]
    prev = tokenizer([s[-p * _CHARS_PER_TOKEN:] for s in prevs], add_special_tokens=False)["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out = np.zeros((len(prompts), cfg.width), dtype=np.int64)
    for i, (u, a) in enumerate(zip(user, prev)):
        u = u if len(u) <= h + t else u[:h] + u[-t:]
        row = [cls, *u, sep, *a[-p:], sep] if p else [cls, *u, sep]
        out[i, :len(row)] = row
    return out


def _scorer_class():
    import torch

    class LengthScorer(torch.nn.Module):
        """First `layers` MiniLM layers + mean pooling + MLP -> standardized log length."""

        def __init__(self, bert, cfg: FinetuneConfig, y_mean: float = 0.0, y_std: float = 1.0):
            super().__init__()
            bert.encoder.layer = bert.encoder.layer[:cfg.layers]
            bert.config.num_hidden_layers = cfg.layers
            bert.pooler = None
            bert.embeddings.requires_grad_(False)
            self.bert = bert
            dim = bert.config.hidden_size
            self.head = torch.nn.Sequential(torch.nn.Linear(dim, cfg.hidden), torch.nn.GELU(),
                                            torch.nn.Linear(cfg.hidden, 1))
            self.register_buffer("y_mean", torch.tensor(float(y_mean)))
            self.register_buffer("y_std", torch.tensor(float(y_std)))

        def forward(self, ids):  # -> standardized log(1 + tokens)
            mask = (ids != 0).long()  # [PAD] is id 0
            hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            return self.head(pooled).squeeze(-1)

        def log_length(self, ids):
            return self.forward(ids).float() * self.y_std + self.y_mean

        def delta_state(self) -> dict:
            """What is trained (layers, head, target scale): the embeddings stay MiniLM's."""
            return {k: v.detach().to("cpu").half() if v.is_floating_point() and v.ndim else v.cpu()
                    for k, v in self.state_dict().items() if not k.startswith("bert.embeddings.")}

    return LengthScorer


def build_scorer(base_dir: pathlib.Path, cfg: FinetuneConfig, y_mean: float = 0.0,
                 y_std: float = 1.0):
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(base_dir), local_files_only=True)
    return _scorer_class()(bert.float(), cfg, y_mean, y_std)


def fit(model, ids: np.ndarray, y_log: np.ndarray, cfg: FinetuneConfig, device: str,
        log=print, label: str = ""):
    """Fine-tune `model` in place on (ids, log length); returns it in eval mode."""
    import torch

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.to(device).train()
    y_std = (y_log - float(model.y_mean)) / float(model.y_std)
    body = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("bert.")]
    opt = torch.optim.AdamW([{"params": body, "lr": cfg.lr},
                             {"params": model.head.parameters(), "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(ids) + cfg.batch_size - 1) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup_fraction * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    ids_t = torch.from_numpy(ids).to(device)
    y_t = torch.from_numpy(y_std.astype(np.float32)).to(device)
    use_bf16 = device.startswith("cuda")
    t0 = time.monotonic()
    for epoch in range(cfg.epochs):
        order = torch.from_numpy(rng.permutation(len(ids))).to(device)
        total_loss = 0.0
        for s in range(0, len(ids), cfg.batch_size):
            b = order[s:s + cfg.batch_size]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                pred = model(ids_t[b])
            loss = torch.nn.functional.huber_loss(pred.float(), y_t[b], delta=cfg.huber_delta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(b)
        log(f"  {label} epoch {epoch + 1}/{cfg.epochs}: loss {total_loss / len(ids):.4f} "
            f"({time.monotonic() - t0:.0f} s)")
    return model.eval()


def predict_log(model, ids: np.ndarray, device: str, batch: int = 1024) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for s in range(0, len(ids), batch):
            out.append(model.log_length(torch.from_numpy(ids[s:s + batch]).to(device)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def fold_file(k: int) -> str:
    return f"encoder_fold{k}.pt"


def _int8_job(base_dir: str, cfg: dict, delta_path: str, ids: np.ndarray,
              keep_as: str | None = None) -> np.ndarray:
    """One trained model's scores as serving computes them: export to int8 ONNX (kept as
    `keep_as` if given), then `FinetunedScorer`. Runs in a worker process (one CPU thread)."""
    import shutil
    import tempfile

    import torch

    torch.set_num_threads(1)
    model = build_scorer(pathlib.Path(base_dir), FinetuneConfig(**cfg))
    delta = torch.load(delta_path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in delta.items()}, strict=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        (folder / REPORT_FILE).write_text(json.dumps({"config": cfg}))
        export_int8(model.eval(), folder / ONNX_FILE)
        if keep_as:
            shutil.copyfile(folder / ONNX_FILE, keep_as)
        return FinetunedScorer(folder, base_dir=pathlib.Path(base_dir)).score_ids(ids)


def int8_scores(jobs: list[tuple[pathlib.Path, np.ndarray, pathlib.Path | None]],
                base_dir: pathlib.Path, cfg: FinetuneConfig, workers: int) -> list[np.ndarray]:
    """`_int8_job` for each (weights file, token ids, where to keep the ONNX or None), in
    parallel worker processes (spawned: the parent may hold a CUDA context)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_int8_job, str(base_dir), dataclasses.asdict(cfg), str(path), ids,
                               keep and str(keep)) for path, ids, keep in jobs]
        return [f.result() for f in futures]


def run(data: pathlib.Path, base_dir: pathlib.Path, out: pathlib.Path, cfg: FinetuneConfig,
        device: str, folds: bool = True, log=print, scratch: pathlib.Path | None = None,
        workers: int = 6) -> dict:
    """A model on all of train (`encoder.onnx`, int8, for serving) and one per fold, whose
    held-out rows get out-of-fold scores. The scores the trees learn from are the int8
    ONNX scores, as serving will compute them (int8 moves a score by about 0.04 in log
    length); the fp32 scores are kept beside them."""
    import torch

    z = np.load(data)
    ids, y, split, fold = (z["ids"].astype(np.int64), z["y"].astype(np.float64), z["split"],
                           z["fold"])
    ly = np.log1p(y)
    tr = np.flatnonzero(split == 0)
    mean, std = float(ly[tr].mean()), float(ly[tr].std())
    out.mkdir(parents=True, exist_ok=True)
    scratch = scratch or out / "weights"
    scratch.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    model = fit(build_scorer(base_dir, cfg, mean, std), ids[tr], ly[tr], cfg, device, log, "all")
    fp32 = predict_log(model, ids, device)
    torch.save(model.delta_state(), scratch / ENCODER_FILE)
    report = {"config": dataclasses.asdict(cfg), "device": device,
              "val_tau_fp32": _kendall(fp32[split == 1], y[split == 1]),
              "fit_seconds_all": round(time.monotonic() - t0, 1)}
    log(f"  layers {cfg.layers}: validation tau {report['val_tau_fp32']:.4f} (fp32)")
    oof_fp32 = np.full(len(tr), np.nan, dtype=np.float32)
    # The model that scores validation and test is the one exported for serving.
    jobs = [(scratch / ENCODER_FILE, ids[split != 0], out / ONNX_FILE)]
    held_rows = []
    if folds:
        for k in sorted(set(fold[tr].tolist())):
            held = np.flatnonzero(fold[tr] == k)
            keep = tr[fold[tr] != k]
            m = fit(build_scorer(base_dir, cfg, mean, std), ids[keep], ly[keep], cfg, device,
                    log, f"fold {k}")
            oof_fp32[held] = predict_log(m, ids[tr[held]], device)
            torch.save(m.delta_state(), scratch / fold_file(k))
            jobs.append((scratch / fold_file(k), ids[tr[held]], None))
            held_rows.append(held)
        report["oof_tau_fp32"] = _kendall(oof_fp32, y[tr])
    log(f"  int8 scores of {len(jobs)} models on the CPU ...")
    t1 = time.monotonic()
    scored = int8_scores(jobs, base_dir, cfg, workers)
    int8 = np.full(len(y), np.nan, dtype=np.float32)
    int8[split != 0] = scored[0]
    for held, sc in zip(held_rows, scored[1:]):
        int8[tr[held]] = sc
    report.update({s + "_tau": _kendall(int8[split == c], y[split == c])
                   for s, c in (("val", 1), ("test", 2))})
    if folds:
        report["oof_tau"] = _kendall(int8[tr], y[tr])
    report["int8_seconds"] = round(time.monotonic() - t1, 1)
    report["seconds"] = round(time.monotonic() - t0, 1)
    np.savez_compressed(out / OOF_FILE, oof=int8[tr], oof_fp32=oof_fp32, key=z["key"][tr],
                        y=y[tr].astype(np.int32), int8=int8, fp32=fp32.astype(np.float32),
                        split=split)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    log(json.dumps(report))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m length_model.finetune",
                                description="fine-tune the MiniLM length scorer (out of fold)")
    p.add_argument("--data", required=True, help="npz from `python -m length_model finetune-data`")
    p.add_argument("--base", required=True, help="MiniLM folder (config + weights)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-folds", action="store_true", help="only the model on all of train")
    p.add_argument("--max-rows", type=int, default=0, help="smoke runs: first N rows only")
    p.add_argument("--scratch", default=None, help="fold weights (default OUT/weights)")
    p.add_argument("--workers", type=int, default=6, help="processes for the int8 scoring")
    for f in dataclasses.fields(FinetuneConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = p.parse_args(argv)
    cfg = FinetuneConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)})
    data = pathlib.Path(args.data)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.max_rows:
        z = dict(np.load(data))
        data = pathlib.Path(args.out) / "subset.npz"
        data.parent.mkdir(parents=True, exist_ok=True)
        np.savez(data, **{k: v[:args.max_rows] for k, v in z.items()})
    run(data, pathlib.Path(args.base), pathlib.Path(args.out), cfg, args.device,
        folds=not args.no_folds, log=log, scratch=args.scratch and pathlib.Path(args.scratch),
        workers=args.workers)
    return 0



def export_int8(model, path: pathlib.Path) -> pathlib.Path:
    """The trained scorer (on the CPU, fp32) -> ONNX with int8 transformer weights (ONNX
    Runtime dynamic quantization, per channel). The graph takes the word embeddings of one
    unpadded request ([1, tokens, 384]) and returns log(1 + tokens): the 30K x 384 word
    table stays out of the file (serving reads it from the MiniLM package)."""
    import tempfile

    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    class FromEmbeddings(torch.nn.Module):
        def __init__(self, scorer):
            super().__init__()
            self.scorer = scorer

        def forward(self, inputs_embeds):
            hidden = self.scorer.bert(inputs_embeds=inputs_embeds).last_hidden_state
            pooled = hidden.mean(1)  # one unpadded request: the masked mean of training
            return self.scorer.head(pooled).squeeze(-1) * self.scorer.y_std + self.scorer.y_mean

    wrapper = FromEmbeddings(model.to("cpu").float().eval()).eval()
    example = torch.zeros(1, 8, model.bert.config.hidden_size)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = pathlib.Path(tmp) / "fp32.onnx"
        torch.onnx.export(wrapper, (example,), str(fp32), input_names=["inputs_embeds"],
                          output_names=["log_length"], opset_version=17, dynamo=False,
                          dynamic_axes={"inputs_embeds": {1: "tokens"}})
        fused = pathlib.Path(tmp) / "fused.onnx"
        cfg = model.bert.config
        optimizer.optimize_model(str(fp32), model_type="bert", num_heads=cfg.num_attention_heads,
                                 hidden_size=cfg.hidden_size).save_model_to_file(str(fused))
        quantize_dynamic(str(fused), str(path), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return path


def word_table(base_dir: pathlib.Path) -> np.ndarray:
    from safetensors.numpy import load_file

    weights = load_file(str(base_dir / "model.safetensors"))
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    return weights[key].astype(np.float32)


class FinetunedScorer:
    """Serving side: (last user message, previous answer) -> predicted log(1 + tokens), with
    ONNX Runtime on one CPU thread (int8 transformer weights, `export_int8`)."""

    def __init__(self, folder: pathlib.Path, model_file: str = ONNX_FILE,
                 base_dir: pathlib.Path | None = None, table: np.ndarray | None = None):
        """`table`: MiniLM's word-embedding table if the caller holds it already (the static
        encoder does), else read from `base_dir` (default: the installed package)."""
        import onnxruntime as ort

        from .embed import minilm_path
        from .wordpiece import WordPiece

        self.folder = folder = pathlib.Path(folder)
        report = json.loads((folder / REPORT_FILE).read_text())
        self.cfg = FinetuneConfig(**report["config"])
        base = pathlib.Path(base_dir or minilm_path())
        self.tokenizer = WordPiece(base)  # the same ids as transformers', without loading it
        self.table = word_table(base) if table is None else table
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(folder / model_file), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # one clear error for the caller
            raise ValueError(f"cannot load {folder / model_file}: {exc}") from exc

    def __call__(self, prompts: list[str], prevs: list[str]) -> np.ndarray:
        if not prompts:
            return np.zeros(0, dtype=np.float32)
        return self.score_ids(input_ids(self.tokenizer, prompts, prevs, self.cfg))

    def score_ids(self, ids: np.ndarray) -> np.ndarray:
        """One request at a time: dynamic quantization scales each input by its own range,
        so a batch would make a request's score depend on its neighbours and on padding."""
        out = np.zeros(len(ids), dtype=np.float32)
        for i, row in enumerate(ids):
            emb = self.table[row[row != 0]][None]
            out[i] = self.session.run(None, {"inputs_embeds": emb})[0][0]
        return out


if __name__ == "__main__":
    sys.exit(main())
