"""Canonical SMILES-set matching, top-k / invalid fraction, unique classes, the reaction-class classifier."""

from __future__ import annotations

import torch

from metrics.chemistry import (
    MeanValue,
    ReactionClassifier,
    TopKExactMatch,
    canonical_set,
    fit_reaction_classifier,
    train_reaction_classifier,
    unique_classes,
)


def test_canonical_set_ignores_order_spelling_and_maps() -> None:
    a, b = "CC(=O)O", "NCc1ccccc1"
    assert canonical_set(f"{a}.{b}") == canonical_set(f"{b}.{a}")
    # non-canonical spellings of the same molecules
    assert canonical_set("OC(C)=O.c1ccc(CN)cc1") == canonical_set(f"{a}.{b}")
    assert canonical_set("C1=CC=CC=C1") == canonical_set("c1ccccc1")  # Kekulé vs aromatic
    # atom maps are removed
    assert canonical_set("[CH3:1][C:2](=[O:3])[OH:4]") == canonical_set("CC(=O)O")
    assert canonical_set("CC(=O)O") != canonical_set("CC(=O)OC")
    assert canonical_set("C1CC") is None and canonical_set("") is None


def test_topk_exact_match_numbers() -> None:
    metric = TopKExactMatch((1, 3, 5, 10))
    targets = ["CC(=O)O.NCc1ccccc1", "CCO", "CCN", "c1ccccc1O"]
    predictions = [
        ["c1ccc(CN)cc1.OC(C)=O"],  # rank 0 (order + spelling differ)
        ["CCN", "C1CC", "OCC"],  # rank 2 (invalid kept its rank)
        ["CCC", "CCC", "CC", "CCCC", "CCCCC", "NCC"],  # duplicate removed -> NCC at rank 4
        ["xx", "CC"],  # miss; top-1 invalid
    ]
    metric.update(predictions, targets)
    out = metric.compute()
    assert torch.isclose(out["top1_acc"], torch.tensor(0.25))
    assert torch.isclose(out["top3_acc"], torch.tensor(0.5))
    assert torch.isclose(out["top5_acc"], torch.tensor(0.75))
    assert torch.isclose(out["top10_acc"], torch.tensor(0.75))
    assert torch.isclose(out["invalid_frac"], torch.tensor(0.25))
    n_preds = 1 + 3 + 5 + 2  # after removing one duplicate
    assert torch.isclose(out["invalid_frac@10"], torch.tensor(2 / n_preds))


def test_unique_classes_and_mean() -> None:
    rows = torch.tensor([[0, 0, 1, -1], [2, 2, 2, 2], [-1, -1, -1, -1]])
    assert unique_classes(rows).tolist() == [2.0, 1.0, 0.0]
    m = MeanValue()
    m.update(unique_classes(rows))
    assert abs(float(m.compute()) - 1.0) < 1e-6


def test_reaction_classifier_learns_two_classes() -> None:
    torch.manual_seed(0)
    # amide couplings (class 0) vs nitro reductions (class 1)
    amides = [("CC(=O)NC" + "C" * i, "CC(=O)O.NC" + "C" * i) for i in range(6)]
    nitros = [("Nc1ccc(" + "C" * (i + 1) + ")cc1", "O=[N+]([O-])c1ccc(" + "C" * (i + 1) + ")cc1") for i in range(6)]
    pairs = amides + nitros
    labels = [0] * 6 + [1] * 6
    clf = ReactionClassifier(num_classes=2, hidden=32, depth=2)
    acc = train_reaction_classifier(clf, [p for p, _ in pairs], [r for _, r in pairs], labels, epochs=30, batch_size=4)
    assert acc == 1.0
    pred = clf.predict(["CC(=O)NCCCCCCCC", "Nc1ccc(CCCCCCCC)cc1", "C1CC"],
                       ["CC(=O)O.NCCCCCCCC", "O=[N+]([O-])c1ccc(CCCCCCCC)cc1", "CC"])
    assert pred.tolist() == [0, 1, -1]  # invalid product -> -1


def test_fit_reaction_classifier_ignores_and_keeps_the_global_rng() -> None:
    """Same seed, same classifier, whatever the global RNG did before; and the global RNG is left as it was."""
    pairs = [("CC(=O)NC" + "C" * i, "CC(=O)O.NC" + "C" * i) for i in range(3)]
    pairs += [("Nc1ccc(C" + "C" * i + ")cc1", "O=[N+]([O-])c1ccc(C" + "C" * i + ")cc1") for i in range(3)]
    args = ([p for p, _ in pairs], [r for _, r in pairs], [0, 0, 0, 1, 1, 1])
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        torch.rand(global_seed * 7)
        expected = torch.rand(3, generator=torch.Generator().manual_seed(0).set_state(torch.get_rng_state()))
        model, _ = fit_reaction_classifier(*args, num_classes=2, epochs=2, batch_size=4)
        assert torch.equal(torch.rand(3), expected)  # global RNG untouched
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
