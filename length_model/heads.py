"""Small heads trained on cached prompt features.

- `PosterHead`: the poster's set-up, an MLP 256-128 (LayerNorm, ReLU, dropout 0.2) over the
  MiniLM sentence embedding, classifying into 20 equal-frequency output-length buckets.
- `RankHead`: the same trunk, predicting the mean `mu` and spread `sigma` of
  log(1 + output tokens) (Gaussian likelihood), trained jointly with a pairwise logistic
  ranking loss on `mu`, because a scheduler needs the order of requests and the sum of
  their decode work rather than a bucket label.

Both keep the input standardisation (feature mean/std from the training set) as buffers,
so a saved state dict is self-contained.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def _trunk(in_dim: int, hidden: tuple[int, ...], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    prev = in_dim
    for width in hidden:
        layers += [nn.Linear(prev, width), nn.LayerNorm(width), nn.ReLU(), nn.Dropout(dropout)]
        prev = width
    return nn.Sequential(*layers)


class _Head(nn.Module):
    def __init__(self, in_dim: int, hidden: tuple[int, ...], dropout: float):
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(in_dim))
        self.register_buffer("x_std", torch.ones(in_dim))
        self.trunk = _trunk(in_dim, hidden, dropout)
        self.out_dim = hidden[-1] if hidden else in_dim

    def set_standardisation(self, x: np.ndarray) -> None:
        self.x_mean.copy_(torch.from_numpy(x.mean(0)))
        self.x_std.copy_(torch.from_numpy(np.maximum(x.std(0), 1e-6)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk((x - self.x_mean) / self.x_std)


class PosterHead(_Head):
    def __init__(self, in_dim: int, num_buckets: int = 20, hidden: tuple[int, ...] = (256, 128),
                 dropout: float = 0.2):
        super().__init__(in_dim, hidden, dropout)
        self.out = nn.Linear(self.out_dim, num_buckets)
        # Bucket edges (tokens) and the mean tokens of each bucket, from the training set.
        self.register_buffer("edges", torch.zeros(num_buckets - 1))
        self.register_buffer("bucket_mean_tokens", torch.zeros(num_buckets))
        self.register_buffer("bucket_mean_log", torch.zeros(num_buckets))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))  # logits

    def loss(self, x: torch.Tensor, y_tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self(x), self.bucketize(y_tokens))

    def bucketize(self, y_tokens: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(y_tokens.to(self.edges.dtype), self.edges, right=True)

    def set_buckets(self, y_tokens: np.ndarray) -> None:
        k = self.out.out_features
        edges = np.quantile(y_tokens, np.arange(1, k) / k)
        self.edges.copy_(torch.from_numpy(edges.astype(np.float32)))
        b = np.searchsorted(edges, y_tokens, side="right")
        for i in range(k):
            sel = y_tokens[b == i]
            mid = float(np.median(y_tokens)) if sel.size == 0 else None
            self.bucket_mean_tokens[i] = float(sel.mean()) if mid is None else mid
            self.bucket_mean_log[i] = float(np.log1p(sel).mean()) if mid is None else math.log1p(mid)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        p = torch.softmax(self(x), dim=-1)
        return {"probs": p, "mean_tokens": p @ self.bucket_mean_tokens,
                "score": p @ self.bucket_mean_log}


class RankHead(_Head):
    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (256, 128), dropout: float = 0.2,
                 rank_loss_weight: float = 1.0):
        super().__init__(in_dim, hidden, dropout)
        self.out = nn.Linear(self.out_dim, 2)  # mu, log sigma of log1p(tokens), standardised
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        self.rank_loss_weight = rank_loss_weight

    def set_target_scale(self, y_tokens: np.ndarray) -> None:
        z = np.log1p(y_tokens)
        self.y_mean.fill_(float(z.mean()))
        self.y_std.fill_(float(max(z.std(), 1e-6)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.out(self.features(x))
        return out[:, 0], out[:, 1].clamp(-5.0, 3.0)

    def loss(self, x: torch.Tensor, y_tokens: torch.Tensor) -> torch.Tensor:
        mu, log_sigma = self(x)
        z = (torch.log1p(y_tokens.float()) - self.y_mean) / self.y_std
        nll = (log_sigma + 0.5 * ((z - mu) / log_sigma.exp()) ** 2).mean()
        if self.rank_loss_weight <= 0:
            return nll
        # Pairwise logistic (RankNet) loss over all ordered pairs of the batch whose targets
        # differ by more than 10 % (ties in length carry no order to learn).
        dz = z[:, None] - z[None, :]
        dm = mu[:, None] - mu[None, :]
        w = (dz > math.log(1.1) / float(self.y_std)).float()
        rank = (nn.functional.softplus(-dm) * w).sum() / w.sum().clamp(min=1.0)
        return nll + self.rank_loss_weight * rank

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, log_sigma = self(x)
        m = mu * self.y_std + self.y_mean  # mean of log1p(tokens)
        s = log_sigma.exp() * self.y_std
        # log-normal mean of (1 + tokens): the expected decode work, what a cost sums
        mean_tokens = torch.exp(m + 0.5 * s * s) - 1.0
        return {"mu_log": m, "sigma_log": s, "mean_tokens": mean_tokens, "score": m,
                "median_tokens": torch.expm1(m)}

    @torch.no_grad()
    def bucket_probs(self, x: torch.Tensor, edges_tokens: torch.Tensor) -> torch.Tensor:
        """Probability of each bucket under the predicted log-normal (for AUROC etc.)."""
        out = self.predict(x)
        z = (torch.log1p(edges_tokens)[None, :] - out["mu_log"][:, None]) / out["sigma_log"][:, None]
        cdf = torch.special.ndtr(z)
        ones, zeros = torch.ones_like(cdf[:, :1]), torch.zeros_like(cdf[:, :1])
        return torch.cat([cdf, ones], 1) - torch.cat([zeros, cdf], 1)


def build_head(kind: str, in_dim: int, hidden: tuple[int, ...], dropout: float,
               num_buckets: int = 20, rank_loss_weight: float = 1.0) -> _Head:
    if kind == "poster":
        return PosterHead(in_dim, num_buckets, hidden, dropout)
    if kind == "rank":
        return RankHead(in_dim, hidden, dropout, rank_loss_weight)
    raise ValueError(f"unknown head {kind!r} (poster | rank)")
