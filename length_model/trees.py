"""A fitted LightGBM booster (or scikit-learn `HistGradientBoostingRegressor`) as plain numpy
arrays.

sklearn's own `predict` costs about 7 ms per call (a Python loop over the trees), too slow
for the serving budget; here all trees are walked at once with vectorised numpy, one step
per tree level (well under 1 ms for a micro-batch). The arrays are saved with `np.savez`,
so the artifact needs no pickle. Inputs must be finite (no NaN: our features never are).
"""

from __future__ import annotations

import numpy as np


class TreeEnsemble:
    """Sum of regression trees: prediction = baseline + sum of one leaf value per tree.

    A multiclass booster (`num_class` k > 1) stores its trees round by round, tree t
    scoring class t % k, as LightGBM orders them; `predict_classes` sums each class's trees.
    """

    def __init__(self, feature: np.ndarray, threshold: np.ndarray, left: np.ndarray,
                 right: np.ndarray, value: np.ndarray, roots: np.ndarray, baseline: float,
                 max_depth: int, num_class: int = 1):
        # Thresholds and leaf values keep their dtype (float32 when loaded from an artifact:
        # half the memory of float64); comparing float32 features with float32 thresholds
        # gives the same splits as comparing both in float64.
        self.feature, self.threshold = feature.astype(np.int32), np.asarray(threshold)
        self.left, self.right = left.astype(np.int32), right.astype(np.int32)
        self.value, self.roots = np.asarray(value), roots.astype(np.int32)
        self.baseline, self.max_depth = float(baseline), int(max_depth)
        self.num_class = int(num_class)
        if len(self.roots) % self.num_class:
            raise ValueError(f"{len(self.roots)} trees do not split into {self.num_class} classes")

    @classmethod
    def from_sklearn(cls, model) -> "TreeEnsemble":
        """Flatten every tree into global node arrays; a leaf points to itself."""
        feats, thr, lefts, rights, vals, roots = [], [], [], [], [], []
        offset, depth = 0, 0
        for (pred,) in model._predictors:
            n = pred.nodes
            leaf = n["is_leaf"].astype(bool)
            own = np.arange(len(n)) + offset
            feats.append(np.where(leaf, 0, n["feature_idx"]))
            thr.append(np.where(leaf, np.inf, n["num_threshold"]))
            lefts.append(np.where(leaf, own, n["left"] + offset))
            rights.append(np.where(leaf, own, n["right"] + offset))
            vals.append(np.where(leaf, n["value"], 0.0))
            roots.append(offset)
            depth = max(depth, int(n["depth"].max()))
            offset += len(n)
        return cls(np.concatenate(feats), np.concatenate(thr), np.concatenate(lefts),
                   np.concatenate(rights), np.concatenate(vals), np.asarray(roots),
                   float(np.ravel(model._baseline_prediction)[0]), depth)

    @classmethod
    def from_lightgbm(cls, booster, num_iteration: int | None = None) -> "TreeEnsemble":
        """Flatten a LightGBM regression or multiclass booster, its first `num_iteration`
        rounds (all if None): numerical splits `x <= threshold`; our features are never NaN,
        so the missing-value direction never applies. LightGBM folds the starting value
        into the first tree, so the baseline is 0."""
        feats, thr, lefts, rights, vals, roots = [], [], [], [], [], []
        depth = 0

        def add(node: dict, level: int) -> int:
            nonlocal depth
            i = len(feats)
            feats.append(0), thr.append(np.inf), lefts.append(i), rights.append(i), vals.append(0.0)
            if "leaf_value" in node:  # a leaf points to itself
                vals[i] = float(node["leaf_value"])
                depth = max(depth, level)
                return i
            if node.get("decision_type", "<=") != "<=":
                raise ValueError(f"unsupported LightGBM split {node.get('decision_type')!r}")
            feats[i], thr[i] = int(node["split_feature"]), float(node["threshold"])
            lefts[i] = add(node["left_child"], level + 1)
            rights[i] = add(node["right_child"], level + 1)
            return i

        dump = booster.dump_model(num_iteration=num_iteration)
        for tree in dump["tree_info"]:
            roots.append(add(tree["tree_structure"], 0))
        return cls(np.asarray(feats), np.asarray(thr), np.asarray(lefts), np.asarray(rights),
                   np.asarray(vals), np.asarray(roots), 0.0, depth, dump.get("num_class", 1))

    def _leaf_values(self, x: np.ndarray) -> np.ndarray:
        """[n, trees]: the value of the leaf each row reaches in each tree."""
        x = np.asarray(x)
        n = x.shape[0]
        node = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        rows = np.arange(n)[:, None]
        for _ in range(self.max_depth):
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        return self.value[node]

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.num_class != 1:
            raise ValueError("a multiclass ensemble: use predict_classes")
        return self.baseline + self._leaf_values(x).sum(1, dtype=np.float64)

    def predict_classes(self, x: np.ndarray) -> np.ndarray:
        """[n, num_class] raw scores (softmax them for probabilities)."""
        leaves = self._leaf_values(x)
        per_class = leaves.reshape(len(leaves), -1, self.num_class)
        return self.baseline + per_class.sum(1, dtype=np.float64)

    def to_arrays(self, prefix: str = "tree_") -> dict[str, np.ndarray]:
        return {f"{prefix}feature": self.feature, f"{prefix}threshold": self.threshold.astype(np.float32),
                f"{prefix}left": self.left, f"{prefix}right": self.right,
                f"{prefix}value": self.value.astype(np.float32), f"{prefix}roots": self.roots,
                f"{prefix}baseline": np.float64(self.baseline),
                f"{prefix}max_depth": np.int64(self.max_depth),
                f"{prefix}num_class": np.int64(self.num_class)}

    @classmethod
    def from_arrays(cls, z, prefix: str = "tree_") -> "TreeEnsemble":
        return cls(z[f"{prefix}feature"], z[f"{prefix}threshold"], z[f"{prefix}left"],
                   z[f"{prefix}right"], z[f"{prefix}value"], z[f"{prefix}roots"],
                   float(z[f"{prefix}baseline"]), int(z[f"{prefix}max_depth"]),
                   int(z[f"{prefix}num_class"]) if f"{prefix}num_class" in z else 1)
