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
        B, T, d = x.shape
        h = self.transformer.decoder.layers[0].self_attn.num_heads
        return x.view(B, T, h, d // h).transpose(1, 2)

    @staticmethod
    def _proj(mha: nn.MultiheadAttention, x: Tensor, part: int) -> Tensor:
        d = mha.embed_dim
        b = mha.in_proj_bias[part * d : (part + 1) * d] if mha.in_proj_bias is not None else None
        return F.linear(x, mha.in_proj_weight[part * d : (part + 1) * d], b)

    def init_cache(self, memory: Tensor, memory_mask: Tensor) -> dict:
        """Key/value cache for incremental decoding: cross-attention K/V computed once, self-attention
        K/V appended one position per step (exactly what the full decoder computes, in eval mode)."""
        cache: dict = {"cross": [], "self": [], "mask": ~memory_mask[:, None, None, :]}
        for layer in self.transformer.decoder.layers:
            ca = layer.multihead_attn
            cache["cross"].append((self._heads(self._proj(ca, memory, 1)), self._heads(self._proj(ca, memory, 2))))
            cache["self"].append(None)
        return cache

    @staticmethod
    def reorder_cache(cache: dict, index: Tensor) -> dict:
        cache["cross"] = [(k[index], v[index]) for k, v in cache["cross"]]
        cache["self"] = [None if kv is None else (kv[0][index], kv[1][index]) for kv in cache["self"]]
        cache["mask"] = cache["mask"][index]
        return cache

    def decode_step(self, tokens: Tensor, cache: dict, z: Tensor | None = None) -> Tensor:
        """Logits ``(B, V)`` of the next token given the last input token of each row (``tokens``: (B, t))."""
        if self.training:
            raise RuntimeError("incremental decoding runs in eval mode (no dropout)")
        t = tokens.shape[1] - 1
        x = self.embed(tokens[:, -1:]) * math.sqrt(self.d_model)
        if t == 0 and self.latent is not None:
            x = (self.latent(z) * math.sqrt(self.d_model)).unsqueeze(1)
        x = x + self.pos.pe[t].view(1, 1, -1)
        B, d = x.shape[0], self.d_model
        for i, layer in enumerate(self.transformer.decoder.layers):
            sa, ca = layer.self_attn, layer.multihead_attn
            q, k, v = (self._heads(self._proj(sa, x, j)) for j in range(3))
            if cache["self"][i] is not None:
                k = torch.cat([cache["self"][i][0], k], dim=2)
                v = torch.cat([cache["self"][i][1], v], dim=2)
            cache["self"][i] = (k, v)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, d)
            x = layer.norm1(x + sa.out_proj(a))
            q = self._heads(self._proj(ca, x, 0))
            ck, cv = cache["cross"][i]
            a = F.scaled_dot_product_attention(q, ck, cv, attn_mask=cache["mask"]).transpose(1, 2).reshape(B, 1, d)
            x = layer.norm2(x + ca.out_proj(a))
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
        """Greedy decoding: tokens ``(B, L)`` (starting after ``<bos>``, padded after ``<eos>``) and log-probs."""
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
        """Beam search batched over products: all ``B * beam_size`` hypotheses advance in one decoder call.

        Returns tokens ``(B, beam, L)`` (after ``<bos>``; padded after ``<eos>``) and scores ``(B, beam)``,
        sorted best first. Scores are summed log-probabilities, divided by the GNMT length penalty
        ``((5 + len) / 6) ** length_penalty`` when ``length_penalty > 0`` (0 = no normalisation).
        """
        B, device, k = src.shape[0], src.device, beam_size
        memory, mask = self.encode(src)
        memory = memory.repeat_interleave(k, dim=0)
        mask = mask.repeat_interleave(k, dim=0)
        zz = z.repeat_interleave(k, dim=0) if z is not None else None
        cache = self.init_cache(memory, mask) if not self.training else None
        seqs = torch.full((B * k, 1), self.bos_idx, dtype=torch.long, device=device)
        scores = torch.full((B, k), float("-inf"), device=device)
        scores[:, 0] = 0.0  # all beams start identical: keep one alive
        done = torch.zeros(B * k, dtype=torch.bool, device=device)
        lengths = torch.zeros(B * k, device=device)
        for _ in range(max_len):
            if cache is not None:
                logits = self.decode_step(seqs, cache, zz)
            else:
                logits = self.decode(seqs, memory, mask, zz)[:, -1]
            logp = self._forbid(logits).log_softmax(-1).float()  # (B*k, V)
            V = logp.shape[-1]
            # a finished hypothesis extends only with <pad> at no cost
            finished_row = torch.full((V,), float("-inf"), device=device)
            finished_row[self.pad_idx] = 0.0
            logp = torch.where(done[:, None], finished_row[None], logp)
            cand = (scores.view(B * k, 1) + logp).view(B, k * V)
            top, idx = cand.topk(k, dim=1)
            beam = idx // V
            tok = idx % V
            flat = (beam + torch.arange(B, device=device)[:, None] * k).view(-1)
            seqs = torch.cat([seqs[flat], tok.view(-1, 1)], dim=1)
            if cache is not None:
                cache = self.reorder_cache(cache, flat)
            prev_done = done[flat]
            lengths = lengths[flat] + (~prev_done).float()
            done = prev_done | (tok.view(-1) == self.eos_idx)
            scores = top
            if done.all():
                break
        final = scores
        if length_penalty > 0:
            lp = ((5.0 + lengths) / 6.0) ** length_penalty
            final = scores / lp.view(B, k)
            final, order = final.sort(dim=1, descending=True)
            seqs = seqs.view(B, k, -1).gather(1, order[:, :, None].expand(-1, -1, seqs.shape[1]))
            return seqs[:, :, 1:], final
        return seqs.view(B, k, -1)[:, :, 1:], final


def sequence_nll(logits: Tensor, target: Tensor, pad_idx: int = 0) -> Tensor:
    """Per-example negative log-likelihood (summed over non-pad target tokens): ``(B,)``."""
    nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=pad_idx, reduction="none")
    return nll.sum(dim=1)
