"""Chemistry metrics: canonical SMILES-set matching (top-k exact match), invalid fraction, and the
diversity measure of Chen et al. (unique reaction classes among the top-10, by a small
message-passing reaction-class classifier). Imports nothing of ours.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from rdkit import Chem, RDLogger
from torch import Tensor, nn
from torchmetrics import Metric

log = logging.getLogger(__name__)
RDLogger.DisableLog("rdApp.*")


def canonical_molecule(smiles: str, remove_maps: bool = True) -> str | None:
    """RDKit canonical SMILES of one molecule (atom maps removed), ``None`` if it does not parse."""
    if not smiles:
        return None
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    if remove_maps:
        for atom in mol.GetAtoms():
            if atom.GetAtomMapNum():
                atom.SetAtomMapNum(0)
    return Chem.MolToSmiles(mol)


def canonical_set(smiles: str, remove_maps: bool = True) -> str | None:
    """Canonical form of a ``.``-separated set of molecules: each fragment canonicalised, then sorted.

    ``A.B`` and ``B.A`` and any non-canonical spelling of them give the same string; ``None`` if any
    fragment is invalid (or the string is empty).
    """
    if not smiles or not smiles.strip():
        return None
    mol = Chem.MolFromSmiles(smiles.strip())
    if mol is None:
        return None
    if remove_maps:
        for atom in mol.GetAtoms():
            if atom.GetAtomMapNum():
                atom.SetAtomMapNum(0)
    # canonicalise the whole set once, then sort fragments (a fragment can itself contain no '.')
    fragments = Chem.MolToSmiles(mol).split(".")
    return ".".join(sorted(fragments))


class TopKExactMatch(Metric):
    """Top-k exact-match accuracy on canonical SMILES sets, plus the fraction of invalid predictions.

    ``update(predictions, targets)``: ``predictions[i]`` is the ranked list of predicted reactant
    SMILES for example ``i`` (best first), ``targets[i]`` its true reactants. A prediction counts as a
    hit at rank r if its canonical set equals the target's. Duplicates (after canonicalisation) are
    removed before ranking, invalid predictions keep their rank. ``compute()`` returns
    ``{"top{k}_acc": ..., "invalid_frac": <invalid top-1>, "invalid_frac@{K}": <invalid among all top-K>}``.
    States are sums (``dist_reduce_fx="sum"``), so DDP results equal a single process on the same set.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, top_ks: Sequence[int] = (1, 3, 5, 10), **kwargs) -> None:
        super().__init__(**kwargs)
        self.top_ks = tuple(int(k) for k in top_ks)
        self.add_state("hits", default=torch.zeros(len(self.top_ks), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("invalid_top1", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("invalid_all", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("n_predictions", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[Sequence[str]], targets: Sequence[str]) -> None:
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} prediction lists for {len(targets)} targets")
        max_k = max(self.top_ks)
        hits = torch.zeros(len(self.top_ks), dtype=torch.long)
        inv1 = inv_all = n_pred = 0
        for preds, target in zip(predictions, targets):
            truth = canonical_set(target)
            ranked = dedupe_canonical(preds)[:max_k]
            n_pred += len(ranked)
            inv_all += sum(c is None for c in ranked)
            inv1 += int(not ranked or ranked[0] is None)
            rank = next((i for i, c in enumerate(ranked) if c is not None and c == truth), None)
            if rank is not None:
                for j, k in enumerate(self.top_ks):
                    hits[j] += int(rank < k)
        self.hits += hits.to(self.hits.device)
        self.total += len(targets)
        self.invalid_top1 += inv1
        self.invalid_all += inv_all
        self.n_predictions += n_pred

    def compute(self) -> dict[str, Tensor]:
        total = self.total.clamp(min=1).float()
        out = {f"top{k}_acc": self.hits[j].float() / total for j, k in enumerate(self.top_ks)}
        out["invalid_frac"] = self.invalid_top1.float() / total
        out[f"invalid_frac@{max(self.top_ks)}"] = self.invalid_all.float() / self.n_predictions.clamp(min=1).float()
        return out


def dedupe_canonical(predictions: Sequence[str]) -> list[str | None]:
    """Canonicalise a ranked list, dropping later duplicates of a valid set (invalid ones are kept)."""
    out: list[str | None] = []
    seen: set[str] = set()
    for p in predictions:
        c = canonical_set(p)
        if c is not None:
            if c in seen:
                continue
            seen.add(c)
        out.append(c)
    return out


class MeanValue(Metric):
    """Mean of per-example values (e.g. unique classes among top-10), DDP-correct via summed states."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        values = torch.as_tensor(values, dtype=torch.float64).flatten()
        self.total += values.sum().to(self.total.device)
        self.count += values.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


# ---------------------------------------------------------------- reaction-class classifier (diversity)

_ELEMENTS = ("C", "N", "O", "S", "F", "Cl", "Br", "I", "P", "B", "Si", "Se", "Sn", "Mg", "Zn", "Cu", "Li", "Na", "K")
ATOM_FEATURES = len(_ELEMENTS) + 1 + 6 + 5 + 5 + 3


def _onehot(value, choices) -> list[float]:
    out = [0.0] * len(choices)
    out[choices.index(value) if value in choices else len(choices) - 1] = 1.0
    return out


@functools.lru_cache(maxsize=100_000)
def mol_graph(smiles: str) -> tuple[Tensor, Tensor] | None:
    """Atom features ``(n, ATOM_FEATURES)`` and directed edge index ``(2, 2m)`` of a (multi-)molecule
    (memoised: a product is featurised once for its ten predictions)."""
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    feats = []
    for a in mol.GetAtoms():
        sym = a.GetSymbol()
        feats.append(
            [float(sym == e) for e in _ELEMENTS] + [float(sym not in _ELEMENTS)]
            + _onehot(min(a.GetDegree(), 5), list(range(6)))
            + _onehot(min(a.GetTotalNumHs(), 4), list(range(5)))
            + _onehot(max(-2, min(a.GetFormalCharge(), 2)), [-2, -1, 0, 1, 2])
            + [float(a.GetIsAromatic()), float(a.IsInRing()), 1.0]
        )
    src, dst = [], []
    for b in mol.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        src += [i, j]
        dst += [j, i]
    return torch.tensor(feats), torch.tensor([src, dst], dtype=torch.long).reshape(2, -1)


def batch_graphs(graphs: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate graphs: features, edge index (offset), graph index of each atom."""
    xs, es, gs, offset = [], [], [], 0
    for g, (x, e) in enumerate(graphs):
        xs.append(x)
        es.append(e + offset)
        gs.append(torch.full((len(x),), g, dtype=torch.long))
        offset += len(x)
    return torch.cat(xs), torch.cat(es, dim=1), torch.cat(gs)


class ReactionClassifier(nn.Module):
    """Message-passing network (weights shared by product and reactants); class from the embedding difference.

    ``forward(product_graphs, reactant_graphs)`` -> logits over ``num_classes`` reaction classes.
    """

    def __init__(self, num_classes: int = 10, hidden: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.inp = nn.Linear(ATOM_FEATURES, hidden)
        self.msg = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.upd = nn.ModuleList([nn.Linear(2 * hidden, hidden) for _ in range(depth)])
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def embed(self, graphs: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        device = self.inp.weight.device
        x, edges, gidx = (t.to(device) for t in batch_graphs(graphs))
        h = F.relu(self.inp(x))
        for msg, upd in zip(self.msg, self.upd):
            m = torch.zeros_like(h).index_add_(0, edges[1], msg(h)[edges[0]])
            h = F.relu(upd(torch.cat([h, m], dim=-1)))
        return torch.zeros(len(graphs), h.shape[1], device=device, dtype=h.dtype).index_add_(0, gidx, h)

    def forward(self, products: Sequence[tuple[Tensor, Tensor]], reactants: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        return self.out(self.embed(reactants) - self.embed(products))

    @torch.no_grad()
    def predict(self, products: Sequence[str], reactants: Sequence[str]) -> Tensor:
        """Predicted class index (0-based) per (product, reactants) pair; -1 where a SMILES is invalid."""
        out = torch.full((len(products),), -1, dtype=torch.long)
        pg, rg, idx = [], [], []
        for i, (p, r) in enumerate(zip(products, reactants)):
            gp, gr = mol_graph(p), mol_graph(r)
            if gp is not None and gr is not None:
                pg.append(gp)
                rg.append(gr)
                idx.append(i)
        if idx:
            was = self.training
            self.eval()
            device_type = self.inp.weight.device.type
            with torch.autocast(device_type=device_type, enabled=False):  # full precision under AMP test loops
                out[torch.tensor(idx)] = self(pg, rg).argmax(-1).cpu()
            self.train(was)
        return out


def train_reaction_classifier(
    model: ReactionClassifier,
    products: Sequence[str],
    reactants: Sequence[str],
    labels: Sequence[int],
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    max_examples: int | None = None,
) -> float:
    """Train ``model`` (in place) on 0-based class ``labels``; returns its final training accuracy."""
    data = []
    for p, r, y in zip(products, reactants, labels):
        if max_examples is not None and len(data) >= max_examples:
            break  # featurise only what is used (featurisation is the slow part on 40k reactions)
        gp, gr = mol_graph(p), mol_graph(r)
        if gp is not None and gr is not None:
            data.append((gp, gr, int(y)))
    if not data:
        raise ValueError("no valid reactions to train the reaction-class classifier on")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    device = model.inp.weight.device
    model.train()
    correct = 0
    autocast_off = torch.autocast(device_type=device.type, enabled=False)
    autocast_off.__enter__()
    for _ in range(epochs):
        correct = 0
        perm = torch.randperm(len(data), generator=gen).tolist()
        for start in range(0, len(data), batch_size):
            chunk = [data[i] for i in perm[start : start + batch_size]]
            y = torch.tensor([c[2] for c in chunk], device=device)
            logits = model([c[0] for c in chunk], [c[1] for c in chunk])
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((logits.argmax(-1) == y).sum())
    autocast_off.__exit__(None, None, None)
    model.eval()
    return correct / len(data)


def fit_reaction_classifier(products: Sequence[str], reactants: Sequence[str], labels: Sequence[int],
                            num_classes: int = 10, device: torch.device | str = "cpu", seed: int = 0,
                            **train_kwargs) -> tuple[ReactionClassifier, float]:
    """A :class:`ReactionClassifier` initialised and trained from ``seed`` alone, the global RNG untouched: the
    same classifier whatever ran before it (models compared by unique-classes@10 are judged by the same one).
    Returns (model in eval mode, final training accuracy)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = ReactionClassifier(num_classes=num_classes).to(device)
        acc = train_reaction_classifier(model, products, reactants, labels, seed=seed, **train_kwargs)
    return model, acc


def unique_classes(classes: Tensor) -> Tensor:
    """Number of distinct valid (>= 0) classes per row of ``(B, k)`` predicted class indices."""
    out = []
    for row in classes:
        row = row[row >= 0]
        out.append(len(torch.unique(row)))
    return torch.tensor(out, dtype=torch.float64)
