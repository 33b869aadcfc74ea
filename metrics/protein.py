"""Ground-truth quality scores of a protein model against its native structure: LDDT and GDT_TS.

Both work on C-alpha coordinates that are already in residue correspondence (row ``i`` of the model
is residue ``i`` of the native); residues absent from a structure are NaN rows or ``False`` in a mask.

* :func:`lddt` -- the local Distance Difference Test (Mariani et al. 2013) on C-alpha atoms:
  inclusion radius 15 A in the native, thresholds 0.5/1/2/4 A; per residue and global (mean over
  all native contacts, contacts to residues absent from the model count as lost).
* :func:`gdt_ts` -- Global Distance Test total score (Zemla 2003): for each cutoff 1, 2, 4, 8 A the
  largest fraction of native residues that one superposition brings within the cutoff, found by an
  LGA-style search: superpose on seed windows of several lengths, then iterate "superpose on the
  residues within the cutoff" until the set stops changing; GDT_TS is the mean of the four fractions.

Pure numpy; imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LDDT_THRESHOLDS = (0.5, 1.0, 2.0, 4.0)
GDT_CUTOFFS = (1.0, 2.0, 4.0, 8.0)


def _present(coords: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    ok = np.isfinite(coords).all(axis=-1)
    return ok if mask is None else ok & np.asarray(mask, dtype=bool)


def lddt(
    model: np.ndarray,
    native: np.ndarray,
    model_mask: np.ndarray | None = None,
    native_mask: np.ndarray | None = None,
    inclusion_radius: float = 15.0,
    thresholds: Sequence[float] = LDDT_THRESHOLDS,
) -> tuple[np.ndarray, float]:
    """C-alpha LDDT of ``model`` (N, 3) against ``native`` (N, 3).

    Returns ``(per_residue, global)``: ``per_residue[i]`` is the fraction of residue ``i``'s native
    contacts (other residues within ``inclusion_radius`` in the native) whose distance the model
    preserves, averaged over ``thresholds``; NaN where the residue is absent from the model or the
    native, or has no native contact. ``global`` is the same fraction over all contacts of all
    native residues (a contact with a residue missing from the model counts as lost), so a partial
    model is penalised for what it lacks.
    """
    model = np.asarray(model, dtype=np.float64)
    native = np.asarray(native, dtype=np.float64)
    if model.shape != native.shape or model.ndim != 2 or model.shape[1] != 3:
        raise ValueError(f"model and native must both be (N, 3) in residue correspondence, got {model.shape} and {native.shape}")
    in_model = _present(model, model_mask)
    in_native = _present(native, native_mask)
    n = len(native)
    nat = np.where(in_native[:, None], native, 0.0)
    mod = np.where(in_model[:, None], model, 0.0)
    d_nat = np.linalg.norm(nat[:, None] - nat[None], axis=-1)
    d_mod = np.linalg.norm(mod[:, None] - mod[None], axis=-1)
    contact = (d_nat < inclusion_radius) & in_native[:, None] & in_native[None] & ~np.eye(n, dtype=bool)
    both = in_model[:, None] & in_model[None]
    diff = np.abs(d_mod - d_nat)
    preserved = sum(((diff < t) & contact & both).astype(np.float64) for t in thresholds) / len(thresholds)
    n_contacts = contact.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_residue = preserved.sum(axis=1) / n_contacts
    per_residue[(n_contacts == 0) | ~in_model | ~in_native] = np.nan
    total = contact.sum()
    global_score = float(preserved.sum() / total) if total else float("nan")
    return per_residue, global_score


def kabsch(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched weighted least-squares superposition of ``x`` onto ``y``.

    ``x``, ``y``: (N, 3); ``w``: (B, N) non-negative weights (0/1 selections). Returns rotations
    (B, 3, 3) and translations (B, 3) such that ``x @ R[b].T + t[b]`` best fits ``y`` on the
    residues weighted by ``w[b]``.
    """
    wsum = np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
    cx = (w @ x) / wsum
    cy = (w @ y) / wsum
    # H = sum_n w x_n y_n^T - W cx cy^T  (weighted cross-covariance, without (B, N, 3) temporaries)
    h = np.matmul((w[:, :, None] * x[None]).transpose(0, 2, 1), y) - wsum[:, :, None] * cx[:, :, None] * cy[:, None, :]
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.matmul(u, vt)))
    vt[:, 2] *= d[:, None]
    r = np.matmul(vt.transpose(0, 2, 1), u.transpose(0, 2, 1))  # R = V diag(1,1,d) U^T
    t = cy - np.matmul(r, cx[:, :, None])[..., 0]
    return r, t


def _distances(x: np.ndarray, y: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(B, N) distances between the superposed ``x`` (by each ``r``, ``t``) and ``y``."""
    moved = np.matmul(x[None], r.transpose(0, 2, 1)) + t[:, None]
    return np.sqrt(((moved - y[None]) ** 2).sum(axis=-1))


def _seed_windows(n: int, lengths: Sequence[int], stride: int | None) -> np.ndarray:
    windows = []
    for length in sorted({min(max(3, int(length)), n) for length in lengths}, reverse=True):
        step = stride or max(1, length // 4)
        starts = list(range(0, n - length + 1, step))
        if starts[-1] != n - length:
            starts.append(n - length)
        for s in starts:
            row = np.zeros(n, dtype=bool)
            row[s : s + length] = True
            windows.append(row)
    return np.array(windows)


def _select(dist: np.ndarray, d: float) -> np.ndarray:
    """Residues closer than ``d``; while a row selects fewer than 3, widen its ``d`` by 0.5 A (TM-score's rule)."""
    sel = dist < d
    widen = d
    few = sel.sum(axis=1) < 3
    while few.any() and dist.shape[1] > 3:
        widen += 0.5
        sel[few] = dist[few] < widen
        few = sel.sum(axis=1) < 3
    return sel


def _unique_rows(sel: np.ndarray) -> np.ndarray:
    """Drop duplicate selections (many seeds converge to the same set; their futures are identical)."""
    _, idx = np.unique(np.packbits(sel, axis=1), axis=0, return_index=True)
    return sel[np.sort(idx)]


def _counts(dist: np.ndarray, cutoffs: Sequence[float]) -> np.ndarray:
    return np.array([float((dist <= c).sum(axis=1).max()) for c in cutoffs])


def _tmscore_lengths(n: int) -> list[int]:
    """TM-score's seed lengths: n, n/2, n/4, ... (at most 5 halvings), ending with 4."""
    minimum = min(4, n)
    lengths = []
    for i in range(5):
        length = n // 2**i
        if length <= minimum:
            break
        lengths.append(length)
    return [*lengths, minimum]


def gdt(
    model: np.ndarray,
    native: np.ndarray,
    model_mask: np.ndarray | None = None,
    native_mask: np.ndarray | None = None,
    cutoffs: Sequence[float] = GDT_CUTOFFS,
    search: str = "tmscore",
    seed_lengths: Sequence[int] | None = None,
    stride: int | None = None,
    max_iter: int = 20,
) -> np.ndarray:
    """Fraction of native residues within each cutoff after the best superposition found.

    Seeds are contiguous windows of the residues present in both structures; from each seed:
    superpose (Kabsch), select the residues within a distance, superpose on those, repeat until the
    selection stops changing (at most ``max_iter`` times), and keep, per cutoff, the largest number of
    residues within it seen at any step. Denominator: the number of native residues (a residue
    missing from the model is never within). ``search``:

    * ``"tmscore"`` (default): the procedure of Zhang & Skolnick's TM-score program, whose GDT-TS
      equals LGA's on the CASP13 models checked in the tests: seed lengths n, n/2, ... 4 at every
      offset, selection radius d0_search - 1 after the seed and d0_search + 1 while iterating
      (d0_search = TM-score's d0 clipped to [4.5, 8] A), ``d <= cutoff`` counted on every
      superposition visited;
    * ``"per_cutoff"``: LGA's idea of one search per cutoff (selection radius = the cutoff itself),
      seeds of ``seed_lengths`` (default n, n/2, ... 4 and 3) moved by ``stride`` (default a
      quarter of the window); finds superpositions at least as good for the small cutoffs, so it
      can be slightly above LGA/TM-score.
    """
    model = np.asarray(model, dtype=np.float64)
    native = np.asarray(native, dtype=np.float64)
    if model.shape != native.shape or model.ndim != 2 or model.shape[1] != 3:
        raise ValueError(f"model and native must both be (N, 3) in residue correspondence, got {model.shape} and {native.shape}")
    if search not in ("tmscore", "per_cutoff"):
        raise ValueError(f"search must be 'tmscore' or 'per_cutoff', got {search!r}")
    in_native = _present(native, native_mask)
    both = in_native & _present(model, model_mask)
    n_native = int(in_native.sum())
    if n_native == 0:
        raise ValueError("the native has no residue with coordinates")
    x, y = model[both], native[both]
    n = len(x)
    if n < 3:
        return np.zeros(len(cutoffs))
    best = np.zeros(len(cutoffs))
    if search == "tmscore":
        d0 = 1.24 * (n_native - 15) ** (1.0 / 3.0) - 1.8 if n_native > 15 else 0.5
        d0_search = min(max(d0, 4.5), 8.0)
        seeds = _seed_windows(n, seed_lengths or _tmscore_lengths(n), stride or 1)
        r, t = kabsch(x, y, seeds.astype(np.float64))
        dist = _distances(x, y, r, t)
        best = np.maximum(best, _counts(dist, cutoffs))
        sel = _unique_rows(_select(dist, d0_search - 1.0))
        for _ in range(max_iter):
            r, t = kabsch(x, y, sel.astype(np.float64))
            dist = _distances(x, y, r, t)
            best = np.maximum(best, _counts(dist, cutoffs))
            new = _select(dist, d0_search + 1.0)
            moving = (new != sel).any(axis=1)
            if not moving.any():
                break
            sel = _unique_rows(new[moving])
        return best / n_native
    if seed_lengths is None:
        seed_lengths, length = [3], n
        while length >= 4:
            seed_lengths.append(length)
            length //= 2
    seeds = _seed_windows(n, seed_lengths, stride).astype(np.float64)
    r, t = kabsch(x, y, seeds)
    start_dist = _distances(x, y, r, t)
    for k, cutoff in enumerate(cutoffs):
        dist = start_dist
        sel = None
        for _ in range(max_iter):
            best[k] = max(best[k], float((dist <= cutoff).sum(axis=1).max()))
            new = _select(dist, cutoff)
            if sel is not None:
                moving = (new != sel).any(axis=1)
                if not moving.any():
                    break
                new = new[moving]
            sel = _unique_rows(new)
            r, t = kabsch(x, y, sel.astype(np.float64))
            dist = _distances(x, y, r, t)
        best[k] = max(best[k], float((dist <= cutoff).sum(axis=1).max()))
    return best / n_native


def gdt_ts(model: np.ndarray, native: np.ndarray, model_mask=None, native_mask=None, **search) -> float:
    """GDT_TS in [0, 1]: mean over cutoffs 1, 2, 4, 8 A of :func:`gdt` (multiply by 100 for CASP's scale)."""
    return float(gdt(model, native, model_mask, native_mask, cutoffs=GDT_CUTOFFS, **search).mean())
