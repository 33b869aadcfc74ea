"""Graph-network parts (Battaglia et al. 2018 style) and GraphQA's network on protein residue graphs."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter


def linear_dropout_relu(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, out_features), nn.Dropout(dropout), nn.ReLU())


def shrinking_widths(start: int, end: int, layers: int) -> list[int]:
    """Widths of ``layers`` layers interpolated linearly from ``start`` to ``end``, rounded to the nearest power of two."""
    if layers == 1:
        return [end]
    out = []
    for k in range(layers):
        w = start + (end - start) * k / (layers - 1)
        out.append(2 ** round(math.log2(w)))
    return out


class RBF(nn.Module):
    """Gaussian radial basis encoding of distances: ``kernels`` centres equally spaced in [start, stop], unit variance.

    Unknown distances (NaN) encode to all zeros.
    """

    def __init__(self, kernels: int = 32, start: float = 0.0, stop: float = 20.0, sigma: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(start, stop, kernels))
        self.sigma = sigma

    def forward(self, d: Tensor) -> Tensor:
        known = torch.isfinite(d)
        out = torch.exp(-((torch.nan_to_num(d)[:, None] - self.centers) ** 2) / (2 * self.sigma**2))
        return out * known[:, None]


class _SplitLinear(nn.Module):
    """``Linear(cat([a, b, ...]))`` computed as ``sum(Linear_i(part_i))``: the same function, but a part that
    is gathered per edge (sender, receiver, global) can be projected once per node or graph and then gathered."""

    def __init__(self, in_sizes: list[int], out_features: int) -> None:
        super().__init__()
        self.parts = nn.ModuleList(nn.Linear(n, out_features, bias=(i == 0)) for i, n in enumerate(in_sizes))

    def forward(self, k: int, x: Tensor) -> Tensor:
        return self.parts[k](x)


class GraphLayer(nn.Module):
    """One message-passing layer: edges from (edge, sender, receiver, global), nodes from (node, mean of
    incoming edges, global), global from (mean edges, mean nodes, global); each update Linear-Dropout-ReLU.

    The Linear over concatenated inputs is computed part by part (sender/receiver/global projected before
    they are gathered per edge), which is the same function with far fewer operations on large graphs.
    """

    def __init__(self, in_dims: tuple[int, int, int], out_dims: tuple[int, int, int], dropout: float,
                 use_global: bool = True) -> None:
        super().__init__()
        e_in, v_in, u_in = in_dims
        e_out, v_out, u_out = out_dims
        self.use_global = use_global
        self.edge = _SplitLinear([e_in, v_in, v_in] + ([u_in] if use_global else []), e_out)
        self.node = _SplitLinear([v_in, e_out] + ([u_in] if use_global else []), v_out)
        self.glob = linear_dropout_relu(e_out + v_out + u_in, u_out, dropout) if use_global else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, e: Tensor, u: Tensor | None, edge_index: Tensor, batch: Tensor,
                num_graphs: int) -> tuple[Tensor, Tensor, Tensor | None]:
        src, dst = edge_index
        edge_batch = batch[src]
        h = self.edge(0, e) + self.edge(1, x)[src] + self.edge(2, x)[dst]
        if self.use_global:
            h = h + self.edge(3, u)[edge_batch]
        e = torch.relu(self.dropout(h))
        incoming = scatter(e, dst, dim=0, dim_size=x.size(0), reduce="mean")
        h = self.node(0, x) + self.node(1, incoming)
        if self.use_global:
            h = h + self.node(2, u)[batch]
        x = torch.relu(self.dropout(h))
        if self.use_global:
            e_mean = scatter(e, edge_batch, dim=0, dim_size=num_graphs, reduce="mean")
            x_mean = scatter(x, batch, dim=0, dim_size=num_graphs, reduce="mean")
            u = self.glob(torch.cat([e_mean, x_mean, u], dim=-1))
        return x, e, u


class GraphQANet(nn.Module):
    """GraphQA (Baldassarre et al. 2020): encoder, ``layers`` message-passing layers of shrinking width, readout.

    Inputs (a ``torch_geometric`` batch): ``aa`` residue type (22 classes), ``dssp`` (N, num_dssp) DSSP features
    (14 with 8-state DSSP, 8 with 3-state),
    optional ``msa`` (N, F), ``present`` (residue has coordinates in the decoy), ``edge_dist`` C-beta distance
    (NaN = unknown), ``edge_sep`` sequence-separation class (0..6). Returns per-residue and per-graph scores in [0, 1].

    Args:
        raw: GraphQA_RAW, residue identity only (no DSSP/MSA features).
        use_global: the global pathway; without it the global score is read out from mean-pooled nodes.
        edge_features: RBF distance + separation one-hot on edges; without, every edge carries a constant 1.
        enc_widths / out_widths: (edge, node, global) widths after the encoder and of the last layer;
            layers in between interpolate linearly (rounded to powers of two). Paper: (128, 512, 512) -> (16, 64, 32).
    """

    def __init__(
        self,
        num_dssp: int = 14,
        num_msa: int = 0,
        layers: int = 6,
        enc_widths: tuple[int, int, int] = (128, 512, 512),
        out_widths: tuple[int, int, int] = (16, 64, 32),
        dropout: float = 0.2,
        raw: bool = False,
        use_global: bool = True,
        edge_features: bool = True,
        rbf_kernels: int = 32,
        rbf_max: float = 20.0,
        num_residue_types: int = 22,
        separation_classes: int = 7,
        embedding_dim: int = 32,
    ) -> None:
        super().__init__()
        self.raw, self.use_global, self.edge_features = raw, use_global, edge_features
        self.num_msa, self.num_dssp = num_msa, num_dssp
        self.separation_classes = separation_classes
        self.embed = nn.Embedding(num_residue_types, embedding_dim)
        node_in = embedding_dim + 1 + (0 if raw else num_dssp + num_msa)
        edge_in = rbf_kernels + separation_classes if edge_features else 1
        self.rbf = RBF(rbf_kernels, 0.0, rbf_max)
        e0, v0, u0 = enc_widths
        self.node_encoder = nn.Sequential(linear_dropout_relu(node_in, v0, dropout), linear_dropout_relu(v0, v0, dropout))
        self.edge_encoder = nn.Sequential(linear_dropout_relu(edge_in, e0, dropout), linear_dropout_relu(e0, e0, dropout))
        self.global_bias = nn.Parameter(torch.zeros(u0)) if use_global else None
        widths = list(zip(*(shrinking_widths(a, b, layers) for a, b in zip(enc_widths, out_widths))))
        dims = [tuple(enc_widths), *widths]
        self.layers = nn.ModuleList(
            GraphLayer(dims[k], dims[k + 1], dropout, use_global) for k in range(layers)  # type: ignore[arg-type]
        )
        e_l, v_l, u_l = dims[-1]
        self.local_readout = nn.Linear(v_l, 1)
        self.global_readout = nn.Linear(u_l if use_global else v_l, 1)

    def node_inputs(self, batch) -> Tensor:
        present = batch.present.float()[:, None]
        parts = [self.embed(batch.aa), present]
        if not self.raw:
            if batch.dssp.size(-1) != self.num_dssp:
                raise ValueError(f"the data has {batch.dssp.size(-1)} DSSP features per residue but the model was built "
                                 f"for num_dssp={self.num_dssp} (CASPDataModule: 14 with dssp_states=8, 8 with 3)")
            parts.append(batch.dssp * present)
            if self.num_msa:
                msa = getattr(batch, "msa", None)
                if msa is None or msa.size(-1) != self.num_msa:
                    got = "none" if msa is None else msa.size(-1)
                    raise ValueError(f"the model expects num_msa={self.num_msa} MSA features per residue, the data has "
                                     f"{got} (CASPDataModule: 44 with msa_dir, none without)")
                parts.append(msa)
        return torch.cat(parts, dim=-1)

    def edge_inputs(self, batch) -> Tensor:
        if not self.edge_features:
            return batch.edge_dist.new_ones(batch.edge_dist.size(0), 1)
        sep = nn.functional.one_hot(batch.edge_sep, self.separation_classes).float()
        return torch.cat([self.rbf(batch.edge_dist), sep], dim=-1)

    def forward(self, batch) -> tuple[Tensor, Tensor]:
        num_graphs = int(batch.num_graphs)
        x = self.node_encoder(self.node_inputs(batch))
        e = self.edge_encoder(self.edge_inputs(batch))
        u = self.global_bias.expand(num_graphs, -1) if self.use_global else None
        for layer in self.layers:
            x, e, u = layer(x, e, u, batch.edge_index, batch.batch, num_graphs)
        local = torch.sigmoid(self.local_readout(x)).squeeze(-1)
        pooled = u if self.use_global else scatter(x, batch.batch, dim=0, dim_size=num_graphs, reduce="mean")
        return local, torch.sigmoid(self.global_readout(pooled)).squeeze(-1)
