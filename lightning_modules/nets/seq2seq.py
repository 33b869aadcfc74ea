"""Transformer encoder-decoder for SMILES (Molecular Transformer sizes by default) with an optional
discrete latent class fed to the decoder (mixture model), greedy and batched beam-search decoding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _relu(x: Tensor) -> Tensor:
    return F.relu(x)


class PositionalEncoding(nn.Module):
    """Sinusoidal positions (Vaswani et al.), added to embeddings scaled by sqrt(d_model)."""

    def __init__(self, d_model: int, max_len: int = 1024) -> None:
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pe[: x.shape[1]].unsqueeze(0)


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer over one shared token vocabulary.

    Defaults are the Molecular Transformer's (4+4 layers, d_model 256, 8 heads, feed-forward 2048,
    dropout 0.1). With ``num_latent > 1`` the decoder's first input (the ``<bos>`` position) is the
    embedding of the latent class ``z`` (as in Shen et al.'s mixture of experts for translation).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        num_latent: int = 1,
        max_len: int = 1024,
        pad_idx: int = 0,
        bos_idx: int = 1,
        eos_idx: int = 2,
    ) -> None:
        super().__init__()
        self.d_model, self.num_latent = d_model, num_latent
        self.pad_idx, self.bos_idx, self.eos_idx = pad_idx, bos_idx, eos_idx
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_idx)
        self.latent = nn.Embedding(num_latent, d_model) if num_latent > 1 else None
        self.pos = PositionalEncoding(d_model, max_len)
        self.drop = nn.Dropout(dropout)
        # a plain-function activation keeps PyTorch's inference "fast path" (nested tensors, fused kernel) off:
        # it breaks under autocast and gives results that depend on the batch's padding
        self.transformer = nn.Transformer(
            d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout, activation=_relu,
            batch_first=True,
        )
        self.generator = nn.Linear(d_model, vocab_size)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _embed(self, tokens: Tensor, z: Tensor | None = None) -> Tensor:
        x = self.embed(tokens) * math.sqrt(self.d_model)
        if self.latent is not None:
            if z is None:
                raise ValueError("a mixture model (num_latent > 1) needs the latent class z")
            first = self.latent(z) * math.sqrt(self.d_model)
            x = torch.cat([first.unsqueeze(1), x[:, 1:]], dim=1)
        return self.drop(self.pos(x))

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Memory ``(B, S, d)`` and the source padding mask ``(B, S)`` (True at padding)."""
        mask = src == self.pad_idx
        return self.transformer.encoder(self._embed_src(src), src_key_padding_mask=mask), mask

    def _embed_src(self, src: Tensor) -> Tensor:
        return self.drop(self.pos(self.embed(src) * math.sqrt(self.d_model)))

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor, z: Tensor | None = None) -> Tensor:
        """Logits ``(B, T, V)`` for every position of the teacher-forced decoder input ``tgt_in``."""
        T = tgt_in.shape[1]
        causal = torch.triu(torch.full((T, T), float("-inf"), device=tgt_in.device), diagonal=1)
        h = self.transformer.decoder(
            self._embed(tgt_in, z), memory, tgt_mask=causal, tgt_key_padding_mask=tgt_in == self.pad_idx,
            memory_key_padding_mask=memory_mask,
        )
        return self.generator(h)

    def forward(self, src: Tensor, tgt_in: Tensor, z: Tensor | None = None) -> Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask, z)

    # ------------------------------------------------------------------ decoding
    def _heads(self, x: Tensor) -> Tensor:
        """``(R, T, d)`` -> ``(R, heads, T, d / heads)``."""
        R, T, d = x.shape
        h = self.transformer.decoder.layers[0].self_attn.num_heads
        return x.view(R, T, h, d // h).transpose(1, 2)

    @staticmethod
    def _proj(mha: nn.MultiheadAttention, x: Tensor, part: int, parts: int = 1) -> Tensor:
        """Rows ``part .. part + parts`` (in units of ``d``) of the packed input projection applied to ``x``."""
        d = mha.embed_dim
        sl = slice(part * d, (part + parts) * d)
        return F.linear(x, mha.in_proj_weight[sl], mha.in_proj_bias[sl] if mha.in_proj_bias is not None else None)

    def init_cache(self, memory: Tensor, memory_mask: Tensor) -> dict:
        """Decoding cache of the products being decoded (their beams are the rows, product-major).

        Cross-attention K/V are computed once per *product* ``(P, heads, S, d_h)``: the beams of a product are the
        query rows of one attention call against them, never copied per beam. Self-attention K/V are appended in
        place, per product, one slot per (step, beam) ``(P, heads, steps x beams, d_h)``, and are never reordered
        when the beams are re-ranked: ``anc[p, i, s]`` (the beam slot that hypothesis ``i``'s ancestor held at step
        ``s``) masks each hypothesis's attention to its own history. Re-ranking then only gathers ``anc`` (a few
        integers) instead of copying every hypothesis's K/V history at every step, which dominated batched decoding.
        """
        n = len(self.transformer.decoder.layers)
        cache: dict = {"cross": [], "self": [None] * n, "anc": None, "mask": ~memory_mask[:, None, None, :]}
        for layer in self.transformer.decoder.layers:
            kv = self._proj(layer.multihead_attn, memory, 1, 2)
            cache["cross"].append((self._heads(kv[..., : self.d_model]), self._heads(kv[..., self.d_model :])))
        return cache

    @staticmethod
    def select_products(cache: dict, keep: Tensor) -> dict:
        """Keep only the products ``keep`` (indices) in the cache (finished products leave the batch)."""
        cache["cross"] = [(k[keep], v[keep]) for k, v in cache["cross"]]
        cache["self"] = [None if kv is None else (kv[0][keep], kv[1][keep]) for kv in cache["self"]]
        cache["mask"] = cache["mask"][keep]
        if cache["anc"] is not None:
            cache["anc"] = cache["anc"][keep]
        return cache

    @staticmethod
    def reorder_rows(cache: dict, index: Tensor) -> dict:
        """Hypothesis ``r`` continues the hypothesis in row ``index[r]`` (rows product-major, beams of a product
        contiguous; ``index`` stays within each product): its ancestry becomes that row's."""
        anc = cache["anc"]
        P, k, cap = anc.shape
        cache["anc"] = anc.gather(1, (index % k).view(P, k, 1).expand(-1, -1, cap))
        return cache

    def decode_step(self, last: Tensor, t: int, cache: dict, z: Tensor | None = None) -> Tensor:
        """Logits ``(R, V)`` of position ``t + 1`` given the last token ``last`` ``(R,)`` of every hypothesis
        (``R = products x beams``, product-major; eval mode). Exactly what the full decoder computes."""
        if self.training:
            raise RuntimeError("incremental decoding runs in eval mode (no dropout)")
        R, d, dev = last.shape[0], self.d_model, last.device
        P = cache["mask"].shape[0]
        k = R // P
        if t == 0 and self.latent is not None:
            x = (self.latent(z) * math.sqrt(d)).unsqueeze(1)
        else:
            x = self.embed(last[:, None]) * math.sqrt(d)
        x = x + self.pos.pe[t].view(1, 1, -1)
        anc = cache["anc"]
        if anc is None or anc.shape[2] <= t:  # grow by 16 steps
            grown = torch.zeros(P, k, t + 16, dtype=torch.long, device=dev)
            if anc is not None:
                grown[:, :, :t] = anc[:, :, :t]
            anc = cache["anc"] = grown
        anc[:, :, t] = torch.arange(k, device=dev)  # this step: hypothesis i writes slot i
        # (P, 1, k, (t + 1) * k): hypothesis i sees slot j of step s iff its ancestor at step s held slot j
        own = (anc[:, :, : t + 1, None] == torch.arange(k, device=dev)).view(P, 1, k, (t + 1) * k)
        n = (t + 1) * k
        for i, layer in enumerate(self.transformer.decoder.layers):
            sa, ca = layer.self_attn, layer.multihead_attn
            h = sa.num_heads
            qkv = self._proj(sa, x, 0, 3).view(P, k, 3, h, d // h)
            q, kk, vv = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # (P, heads, k, d_h)
            buf = cache["self"][i]
            if buf is None or buf[0].shape[2] < n:  # grow by 16 steps
                grown = tuple(kk.new_empty(P, h, (t + 16) * k, d // h) for _ in range(2))
                if buf is not None:
                    for b_new, b_old in zip(grown, buf):
                        b_new[:, :, : t * k] = b_old[:, :, : t * k]
                buf = cache["self"][i] = grown
            buf[0][:, :, t * k : n] = kk
            buf[1][:, :, t * k : n] = vv
            a = F.scaled_dot_product_attention(q, buf[0][:, :, :n], buf[1][:, :, :n], attn_mask=own)
            x = layer.norm1(x + sa.out_proj(a.transpose(1, 2).reshape(R, 1, d)))
            q = self._heads(self._proj(ca, x, 0).view(P, k, d))
            ck, cv = cache["cross"][i]
            a = F.scaled_dot_product_attention(q, ck, cv, attn_mask=cache["mask"])
            x = layer.norm2(x + ca.out_proj(a.transpose(1, 2).reshape(R, 1, d)))
            x = layer.norm3(x + layer.linear2(layer.activation(layer.linear1(x))))
        if self.transformer.decoder.norm is not None:
            x = self.transformer.decoder.norm(x)
        return self.generator(x[:, 0])

    def _forbid(self, logits: Tensor) -> Tensor:
        """Padding and ``<bos>`` are never generated."""
        logits = logits.clone()
        logits[:, [self.pad_idx, self.bos_idx]] = float("-inf")
        return logits

    @torch.no_grad()
    def greedy(self, src: Tensor, max_len: int = 200, z: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Greedy decoding with the full (uncached) decoder: tokens ``(B, L)`` (starting after ``<bos>``, padded
        after ``<eos>``) and log-probs. Kept deliberately simple: it is the reference the beam search is tested on."""
        memory, mask = self.encode(src)
        B = src.shape[0]
        seqs = torch.full((B, 1), self.bos_idx, dtype=torch.long, device=src.device)
        score = torch.zeros(B, device=src.device)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            logp = self._forbid(self.decode(seqs, memory, mask, z)[:, -1]).log_softmax(-1)
            tok = logp.argmax(-1)
            tok = torch.where(done, torch.full_like(tok, self.pad_idx), tok)
            score = score + torch.where(done, torch.zeros_like(score), logp.gather(1, tok[:, None]).squeeze(1))
            seqs = torch.cat([seqs, tok[:, None]], dim=1)
            done = done | (tok == self.eos_idx)
            if done.all():
                break
        return seqs[:, 1:], score

    @torch.no_grad()
    def beam_search(
        self,
        src: Tensor,
        beam_size: int = 10,
        max_len: int = 200,
        length_penalty: float = 0.0,
        z: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Beam search batched over products: the ``products x beam_size`` live hypotheses advance in one
        incremental decoder call per step (K/V cache; eval mode).

        A product leaves the batch as soon as all its beams have emitted ``<eos>`` (so a batch costs what its
        unfinished products cost, not what its longest product costs); no K/V is copied when beams are re-ranked
        (see ``init_cache``). Returns tokens ``(B, beam, L)`` (after ``<bos>``; padded after ``<eos>``) and
        scores ``(B, beam)``, sorted best first. Scores are summed log-probabilities, divided by the GNMT length
        penalty ``((5 + len) / 6) ** length_penalty`` when ``length_penalty > 0`` (0 = no normalisation).
        """
        if self.training:
            raise RuntimeError("beam search runs in eval mode: call .eval() first")
        B, device, k = src.shape[0], src.device, beam_size
        memory, mask = self.encode(src)
        cache = self.init_cache(memory, mask)
        zz = z.repeat_interleave(k, dim=0) if z is not None else None
        out_tokens = torch.full((B, k, max_len), self.pad_idx, dtype=torch.long, device=device)
        out_scores = torch.zeros(B, k, device=device)
        out_lengths = torch.zeros(B, k, device=device)
        active = torch.arange(B, device=device)  # products still decoding
        seqs = torch.empty(B * k, 0, dtype=torch.long, device=device)  # generated tokens of the active rows
        last = torch.full((B * k,), self.bos_idx, dtype=torch.long, device=device)
        scores = torch.full((B, k), float("-inf"), device=device)
        scores[:, 0] = 0.0  # all beams start identical: keep one alive
        done = torch.zeros(B, k, dtype=torch.bool, device=device)
        lengths = torch.zeros(B, k, device=device)
        steps = 0
        for t in range(max_len):
            steps = t + 1
            logp = self._forbid(self.decode_step(last, t, cache, zz)).log_softmax(-1).float()  # (Ba*k, V)
            Ba, V = scores.shape[0], logp.shape[-1]
            # a finished hypothesis extends only with <pad> at no cost
            finished_row = torch.full((V,), float("-inf"), device=device)
            finished_row[self.pad_idx] = 0.0
            logp = torch.where(done.view(-1, 1), finished_row[None], logp)
            top, idx = (scores.view(-1, 1) + logp).view(Ba, k * V).topk(k, dim=1)
            parent = idx // V + torch.arange(Ba, device=device)[:, None] * k  # (Ba, k) row of the parent
            tok = idx % V
            flat = parent.view(-1)
            seqs = torch.cat([seqs[flat], tok.view(-1, 1)], dim=1)
            prev_done = done.view(-1)[flat].view(Ba, k)
            lengths = lengths.view(-1)[flat].view(Ba, k) + (~prev_done).float()
            done = prev_done | (tok == self.eos_idx)
            scores = top
            finished = done.all(dim=1)
            if bool(finished.any()):
                fin = active[finished]
                out_tokens[fin, :, :steps] = seqs.view(Ba, k, -1)[finished]
                out_scores[fin], out_lengths[fin] = scores[finished], lengths[finished]
                keep = (~finished).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                rows = (keep[:, None] * k + torch.arange(k, device=device)).view(-1)
                active, scores, done, lengths = active[keep], scores[keep], done[keep], lengths[keep]
                seqs, flat, tok = seqs[rows], flat[rows], tok[keep]
                cache = self.select_products(cache, keep)
            last = tok.reshape(-1)
            cache = self.reorder_rows(cache, flat)
        else:  # max_len reached: the products still active end here
            out_tokens[active, :, :steps] = seqs.view(len(active), k, -1)
            out_scores[active], out_lengths[active] = scores, lengths
        seqs, final = out_tokens[:, :, :steps], out_scores
        if length_penalty > 0:
            final = final / ((5.0 + out_lengths) / 6.0) ** length_penalty
        final, order = final.sort(dim=1, descending=True, stable=True)
        seqs = seqs.gather(1, order[:, :, None].expand(-1, -1, seqs.shape[2]))
        return seqs, final


def sequence_nll(logits: Tensor, target: Tensor, pad_idx: int = 0) -> Tensor:
    """Per-example negative log-likelihood (summed over non-pad target tokens): ``(B,)``."""
    nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=pad_idx, reduction="none")
    return nll.sum(dim=1)
