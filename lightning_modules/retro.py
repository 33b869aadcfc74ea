"""Retrosynthesis as SMILES seq2seq (Chen et al., "Learning to make generalizable and diverse predictions
for retrosynthesis"): Molecular-Transformer baseline, mixture over K latent classes trained with online
hard-EM, beam search at test, pre-training checkpoints used to initialise fine-tuning."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_modules.base import PaperzooModule
from lightning_modules.nets.seq2seq import Seq2SeqTransformer, sequence_nll
from metrics.chemistry import (MeanValue, ReactionClassifier, TopKExactMatch, canonical_set, fit_reaction_classifier,
                               unique_classes)

log = logging.getLogger(__name__)


def noam_lambda(d_model: int, warmup_steps: int, factor: float):
    """Noam schedule (Vaswani et al.): ``factor * d^-0.5 * min(step^-0.5, step * warmup^-1.5)``; the
    optimizer's ``lr`` multiplies it (set ``lr: 1.0`` to get the schedule itself)."""

    def fn(step: int) -> float:
        step = max(step, 1)
        return factor * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)

    return fn


class RetroTransformer(PaperzooModule):
    """SMILES Transformer for one-step retrosynthesis, optionally a mixture of ``num_latent`` classes.

    The vocabulary comes from the DataModule's training split at ``setup`` and is stored in the
    hyperparameters (so in every checkpoint); ``init_from`` loads the weights (and vocabulary) of a
    pre-training checkpoint when a fit starts from scratch (not when a run restores a checkpoint of its own: a
    fine-tuned checkpoint loads, tests and resumes without the pre-training file). Logs ``train/loss``,
    ``val/loss``, ``val/token_acc``, ``val/top1_acc`` (greedy; mixture: z chosen by likelihood),
    ``test/top{k}_acc``, ``test/invalid_frac``, ``test/invalid_frac@10``, ``test/unique_classes@10``,
    ``data/skipped_*``.
    """

    hparams_metrics = ("val/loss", "val/top1_acc", "test/top1_acc", "test/top10_acc", "test/unique_classes@10")

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        num_latent: int = 1,
        label_smoothing: float = 0.0,
        warmup_steps: int = 8000,
        noam_factor: float = 2.0,
        beam_size: int = 10,
        top_ks: tuple[int, ...] = (1, 3, 5, 10),
        length_penalty: float = 0.0,
        max_decode_len: int = 200,
        val_decode: bool = True,
        classifier_epochs: int = 20,
        classifier_max_examples: int | None = None,
        init_from: str | None = None,
        vocab: list[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.net: Seq2SeqTransformer | None = None
        self.classifier = ReactionClassifier(num_classes=10)
        self.register_buffer("classifier_trained", torch.tensor(False))
        self.val_topk = TopKExactMatch((1,))
        self.test_topk = TopKExactMatch(top_ks)
        self.test_unique = MeanValue()
        if vocab is not None:
            self._build(vocab)

    # ------------------------------------------------------------------ construction
    def _build(self, vocab: list[str]) -> None:
        h = self.hparams
        self.vocab_itos = list(vocab)
        self.net = Seq2SeqTransformer(
            len(vocab), h.d_model, h.nhead, h.num_encoder_layers, h.num_decoder_layers, h.dim_feedforward,
            h.dropout, h.num_latent,
        )

    def _init_from(self, path: str) -> None:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        vocab = ckpt["hyper_parameters"]["vocab"]
        if self.net is None:
            self._build(vocab)
            self.hparams.vocab = list(vocab)
        state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        own = self.net.state_dict()
        # a mixture can start from a base model: latent embeddings stay freshly initialised
        state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        self.net.load_state_dict(state, strict=False)
        rank_zero_info(f"RetroTransformer: initialised {len(state)}/{len(own)} tensors from {path}")

    def setup(self, stage: str) -> None:
        if self.hparams.init_from and stage == "fit" and self.trainer.ckpt_path is None and self.global_step == 0:
            self._init_from(self.hparams.init_from)  # a fresh fine-tuning run; a resumed one restores its own weights
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or getattr(dm, "vocab", None) is None:
            if self.net is None:
                raise RuntimeError("RetroTransformer needs a vocabulary: use USPTODataModule or pass vocab")
            return
        from datamodules.uspto import Vocabulary  # the vocabulary type only; the data layer stays separate

        if self.net is None:
            self.hparams.vocab = list(dm.vocab.itos)
            self._build(self.hparams.vocab)
        elif list(dm.vocab.itos) != self.vocab_itos:
            known = set(self.vocab_itos)
            unknown = [t for t in dm.vocab.itos if t not in known]
            if unknown:
                log.warning("%d training tokens are not in the model's vocabulary (mapped to <unk>): %s",
                            len(unknown), unknown[:20])
            dm.vocab = Vocabulary(self.vocab_itos)

    # ------------------------------------------------------------------ steps
    def forward(self, src: Tensor, tgt_in: Tensor, z: Tensor | None = None) -> Tensor:
        return self.net(src, tgt_in, z)

    def select_latent(self, src: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor]:
        """Hard-EM E-step: the latent class of lowest loss for each example, computed with dropout off.

        Returns ``(z, nll)`` with ``nll`` of shape ``(B, K)``."""
        K, B = self.hparams.num_latent, src.shape[0]
        was = self.net.training
        self.net.eval()
        with torch.no_grad():
            # the latent enters the decoder only: one encoder pass serves all K classes
            memory, mask = self.net.encode(src)
            memory, mask = memory.repeat_interleave(K, 0), mask.repeat_interleave(K, 0)
            tgt_k = tgt.repeat_interleave(K, 0)
            z = torch.arange(K, device=src.device).repeat(B)
            logits = self.net.decode(tgt_k[:, :-1], memory, mask, z)
            nll = sequence_nll(logits, tgt_k[:, 1:], self.net.pad_idx).view(B, K)
        self.net.train(was)
        return nll.argmin(dim=1), nll

    def _step(self, batch: dict, stage: str) -> Tensor:
        src, tgt = batch["src"], batch["tgt"]
        z = None
        if self.hparams.num_latent > 1:
            z, _ = self.select_latent(src, tgt)  # M-step below: only the chosen class gets gradients
        logits = self(src, tgt[:, :-1], z)
        target = tgt[:, 1:]
        loss = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=self.net.pad_idx,
                               label_smoothing=self.hparams.label_smoothing)
        train = stage == "train"
        bs = src.shape[0]
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=not train, prog_bar=True, sync_dist=not train,
                 batch_size=bs)
        if not train:
            mask = target != self.net.pad_idx
            acc = ((logits.argmax(-1) == target) & mask).sum().float() / mask.sum().clamp(min=1)
            self.log(f"{stage}/token_acc", acc, on_epoch=True, sync_dist=True, batch_size=bs)
        if train and z is not None:
            counts = torch.bincount(z, minlength=self.hparams.num_latent).float() / bs
            for k, c in enumerate(counts):
                self.log(f"train/latent_{k}_share", c, on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")
        if self.hparams.val_decode:
            preds = self.predict_reactants(batch["src"], beam_size=1)
            self.val_topk.update([p[:1] for p in preds["smiles"]], batch["reactants"])

    def on_validation_epoch_end(self) -> None:
        if self.hparams.val_decode and self.val_topk.update_count:
            self.log("val/top1_acc", self.val_topk.compute()["top1_acc"])
            self.val_topk.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        out = self.predict_reactants(batch["src"], beam_size=self.hparams.beam_size)
        self.test_topk.update(out["smiles"], batch["reactants"])
        top10 = [p[:10] for p in out["smiles"]]
        products = [p for p, preds in zip(batch["product"], top10) for _ in preds]
        flat = [s for preds in top10 for s in preds]
        classes = self.classifier.predict(products, flat)
        rows, i = [], 0
        for preds in top10:
            rows.append(classes[i : i + len(preds)])
            i += len(preds)
        self.test_unique.update(unique_classes_rows(rows))

    def on_test_epoch_end(self) -> None:
        metrics = {f"test/{k}": v for k, v in self.test_topk.compute().items()}
        metrics["test/unique_classes@10"] = self.test_unique.compute()
        self.log_dict(metrics)
        self.test_topk.reset()
        self.test_unique.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        out = self.predict_reactants(batch["src"], beam_size=self.hparams.beam_size)
        return {"product": batch["product"], **out}

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        schedule = noam_lambda(self.hparams.d_model, self.hparams.warmup_steps, self.hparams.noam_factor)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ hooks
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        vocab = checkpoint.get("hyper_parameters", {}).get("vocab")
        if vocab and (self.net is None or list(vocab) != self.vocab_itos):
            self.hparams.vocab = list(vocab)
            self._build(list(vocab))  # weights follow from the state dict
            dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            if dm is not None and getattr(dm, "vocab", None) is not None:
                from datamodules.uspto import Vocabulary

                dm.vocab = Vocabulary(vocab)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._log_skips()

    def on_test_start(self) -> None:
        self._log_skips()
        if not bool(self.classifier_trained):
            self._train_classifier()

    def _log_skips(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "skip_counts"):
            return
        for logger in self.loggers:
            logger.log_metrics({f"data/skipped_{k}": float(v) for k, v in dm.skip_counts().items()},
                               step=self.global_step)

    def _train_classifier(self) -> None:
        """Fit the reaction-class classifier on the training split's labelled reactions (rank 0, broadcast)."""
        dm = self.trainer.datamodule
        reactions = [r for r in dm.reactions("train") if 1 <= r.cls <= 10]
        state = None
        if self.trainer.is_global_zero and reactions:
            with torch.inference_mode(False), torch.enable_grad():
                clf, acc = fit_reaction_classifier(  # seeded: base and mixture are judged by the same classifier
                    [r.product for r in reactions], [r.reactants for r in reactions], [r.cls - 1 for r in reactions],
                    device=self.device, epochs=self.hparams.classifier_epochs,
                    max_examples=self.hparams.classifier_max_examples)
                state = {k: v.detach().clone() for k, v in clf.state_dict().items()}
            log.info("reaction-class classifier: training accuracy %.3f on %d reactions", acc, len(reactions))
        state = self.trainer.strategy.broadcast(state, src=0)
        if state is not None:
            with torch.inference_mode(False):
                self.classifier.load_state_dict(state)
                self.classifier_trained.fill_(True)

    # ------------------------------------------------------------------ decoding
    def predict_reactants(self, src: Tensor, beam_size: int = 10) -> dict[str, Any]:
        """Ranked reactant SMILES per product, at most ``beam_size``, each a different molecule set: a prediction
        whose canonical set (``A.B`` = ``B.A``, any spelling) ranks below the same set is dropped, so a top-k list
        never spends two slots on one answer. Mixture: ``beam_size`` per latent class, merged by score (the paper's
        "combine those based on likelihoods"). ``scores``/``latent`` follow the kept predictions (``-inf``/``-1``
        pad a product left with fewer than ``beam_size``)."""
        K, B = self.hparams.num_latent, src.shape[0]
        itos = self.vocab_itos
        if K > 1:
            z = torch.arange(K, device=src.device).repeat(B)
            tokens, scores = self.net.beam_search(src.repeat_interleave(K, 0), beam_size, self.hparams.max_decode_len,
                                                  self.hparams.length_penalty, z)
            tokens = tokens.view(B, K * beam_size, -1)
            scores = scores.view(B, K * beam_size)
            latent = torch.arange(K, device=src.device).repeat_interleave(beam_size).expand(B, -1)
            scores, order = scores.sort(dim=1, descending=True)
            tokens = tokens.gather(1, order[:, :, None].expand(-1, -1, tokens.shape[2]))
            latent = latent.gather(1, order)
        else:
            tokens, scores = self.net.beam_search(src, beam_size, self.hparams.max_decode_len,
                                                  self.hparams.length_penalty)
            latent = torch.zeros_like(scores, dtype=torch.long)
        smiles = []
        kept_scores = torch.full((B, beam_size), float("-inf"), device=scores.device)
        kept_latent = torch.full((B, beam_size), -1, dtype=torch.long, device=scores.device)
        for b in range(B):
            row, seen = [], set()
            for j in range(tokens.shape[1]):
                s = _decode(tokens[b, j].tolist(), itos)
                key = canonical_set(s) or f"invalid:{s}"  # invalid strings are only deduplicated verbatim
                if key in seen:  # the same molecules again (another spelling, or another latent class)
                    continue
                seen.add(key)
                kept_scores[b, len(row)], kept_latent[b, len(row)] = scores[b, j], latent[b, j]
                row.append(s)
                if len(row) == beam_size:
                    break
            smiles.append(row)
        return {"smiles": smiles, "scores": kept_scores, "latent": kept_latent}


def _decode(ids: list[int], itos: list[str]) -> str:
    out = []
    for i in ids:
        if i == 2:  # <eos>
            break
        if i >= 4:
            out.append(itos[i])
    return "".join(out)


def _pad_row(row: Tensor, n: int) -> Tensor:
    return F.pad(row, (0, n - len(row)), value=-1)


def unique_classes_rows(rows: list[Tensor]) -> Tensor:
    """Unique predicted classes (ignoring invalid = -1) per product's top-10 list."""
    if not rows:
        return torch.zeros(0, dtype=torch.float64)
    return unique_classes(torch.stack([_pad_row(r, max(10, max(len(x) for x in rows))) for r in rows]))
