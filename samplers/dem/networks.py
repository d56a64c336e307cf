"""Score networks s_theta(t, x) of the iDEM paper, as its official code builds them (§4.8).

* :class:`ScoreMLP` (GMM-40; official ``MyMLP``): sinusoidal embeddings (size 128) of t (scale 1)
  and of every input coordinate (scale 25), concatenated -> Linear -> GELU -> residual blocks
  x + GELU(Linear(x)) -> Linear to ``dim``.
* :class:`EGNN` (particle targets; official ``EGNN_dynamics`` with attention, tanh, recurrent,
  sum aggregation; Satorras et al. 2021): fully connected graph, node features h = t on every node,
  fixed edge attribute = squared distance at the input coordinates. Each layer

      m_ij = a_ij * phi_e(h_i, h_j, |x_i - x_j|^2, a0_ij),   a_ij = sigmoid(Linear(m~_ij))
      x_i <- x_i + sum_{j != i} (x_i - x_j) / (|x_i - x_j| + 1) * tanh(phi_x(m_ij)) * 15 / L
      h_i <- h_i + phi_h(h_i, sum_{j != i} m_ij)

  and the output is x_final - x with the particle mean removed (equivariant to rotations,
  reflections and permutations; translation-invariant; mean-free).

Our EGNN is dense: edge tensors are ``[B, N, N-1, H]`` (receiving node i, then its N-1
neighbours j != i, see :func:`neighbour_index`), so node sums are sums over an axis, with no edge
lists or scatter; the only gather is of the small ``[B, N, H]`` node projection. The first edge
Linear(2H+2, H) is split into a source part, a target part and two rank-one terms, so the
[B, N, N-1, 2H+2] concatenation is never built. In the first layer all nodes carry the same h = t
and the edge attribute equals the current squared distance, so messages are symmetric and that
layer runs on unordered pairs (:meth:`EGNNLayer.forward_first`). The official final node Linear
(``embedding_out``), whose output is discarded, is left out, and so is the last layer's node
update, whose output nothing reads (its parameters stay, with no gradient, as officially).

Parameters are initialised from an explicit generator (:func:`init_parameters`) like PyTorch's
default (U(+-1/sqrt(fan_in)) for weights and biases); the last coordinate layer uses Xavier-uniform
with gain 0.001 as in the official code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``x [...]`` -> ``[..., 2 * len(freqs)]``: [sin(x f), cos(x f)] (official SinusoidalEmbedding)."""
    arg = x.unsqueeze(-1) * freqs
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


class ScoreMLP(nn.Module):
    """Official ``MyMLP``: ``(t [B] or [1], x [B, dim]) -> [B, dim]``. A ``[1]`` time (one t for
    the whole batch, as in the reverse SDE) is embedded once and its part of the first Linear
    computed once: same function, a third less work in that layer."""

    def __init__(self, dim: int, hidden: int = 128, n_blocks: int = 3, emb_size: int = 128,
                 input_scale: float = 25.0):
        super().__init__()
        half = emb_size // 2
        freqs = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, dtype=torch.float32))
        self.register_buffer("freqs", freqs)
        self.input_scale = float(input_scale)
        self.dim = dim
        self.inp = nn.Linear((dim + 1) * 2 * half, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_blocks))
        self.out = nn.Linear(hidden, dim)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        ex = sinusoidal(x * self.input_scale, self.freqs).reshape(B, -1)  # coordinate-major
        et = sinusoidal(t.reshape(-1), self.freqs)                         # [B or 1, E]
        W, k = self.inp.weight, ex.shape[1]  # inp(cat[ex, et]) = ex W_x^T + (et W_t^T + b)
        h = F.gelu(F.linear(ex, W[:, :k]) + F.linear(et, W[:, k:], self.inp.bias))
        for blk in self.blocks:
            h = h + F.gelu(blk(h))
        return self.out(h)


def neighbour_index(n: int) -> torch.Tensor:
    """``[n, n-1]`` long: row i lists every j != i in increasing order (the ordered pairs i != j,
    receiving node i first), so per-node sums over edges are sums over the last-but-one axis."""
    j = torch.arange(n - 1)
    i = torch.arange(n)[:, None]
    return j + (j >= i).long()


def pair_index(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unordered pairs p = (i < j) as ``pi, pj [P]``, and for the ordered layout of
    :func:`neighbour_index` the pair of edge (i, nbr[i, k]) ``pair_of [n, n-1]`` with ``sign``
    +1 where i < j (x_i - x_j = diff_p) and -1 otherwise."""
    pi, pj = torch.triu_indices(n, n, offset=1)
    lookup = torch.zeros(n, n, dtype=torch.long)
    lookup[pi, pj] = torch.arange(pi.numel())
    lookup[pj, pi] = torch.arange(pi.numel())
    nbr = neighbour_index(n)
    rows = torch.arange(n)[:, None].expand_as(nbr)
    sign = torch.where(rows < nbr, 1.0, -1.0)
    return pi, pj, lookup[rows, nbr], sign


def _fused_linear_silu_available() -> bool:
    try:
        x = torch.ones(2, 2)
        out = torch.ops.mkldnn._linear_pointwise(x, x, x[0], "swish", [], "")
        return bool(torch.allclose(out, F.silu(F.linear(x, x, x[0]))))
    except Exception:  # noqa: BLE001 - no oneDNN in this build: the unfused path
        return False


_FUSED = _fused_linear_silu_available()


def _compiling() -> bool:
    """True while torch.compile traces (its lowering rejects the raw oneDNN op)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()  # torch < 2.3


def _linear_silu(x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    """silu(lin(x)). Without autograd, on CPU float32, oneDNN's linear with the SiLU fused into
    its epilogue (the kernel inductor uses): one pass over the output instead of a bias copy, the
    GEMM and the activation (measured: LJ-13 generation forward ~15% faster; for the small GMM-40
    MLP batches the fused GELU was no faster, so ScoreMLP stays eager)."""
    if _FUSED and not torch.is_grad_enabled() and x.device.type == "cpu" \
            and x.dtype == torch.float32 and not _compiling():  # inductor fuses on its own
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), lin.weight, lin.bias,
                                               "swish", [], "")
        return y.view(*shape[:-1], y.shape[-1])
    return F.silu(lin(x), inplace=not torch.is_grad_enabled())


def _neighbours(v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``v [B, N, ...]`` gathered along the node axis by ``index [N, K]`` -> ``[B, N, K, ...]``.
    ``index_select`` on the flattened index: on CPU about 5x faster than ``v[:, index]``
    (advanced indexing) for LJ-13 edge tensors (3 ms vs 14 ms for [256, 13, 12, 128])."""
    return v.index_select(1, index.reshape(-1)).view(v.shape[0], *index.shape, *v.shape[2:])


class EGNNLayer(nn.Module):
    """One E(n)-equivariant layer on ``h [B, N, H]``, ``x [B, N, D]``, ``a0 [B, N, N-1, 1]``;
    ``nbr`` from :func:`neighbour_index`. Edge tensors are ``[B, N, N-1, .]``."""

    def __init__(self, hidden: int, coords_range: float):
        super().__init__()
        H = hidden
        self.hidden = H
        self.edge1 = nn.Linear(2 * H + 2, H)  # [h_i, h_j, |x_i-x_j|^2, a0_ij] as officially
        self.edge2 = nn.Linear(H, H)
        self.att = nn.Linear(H, 1)
        self.node1 = nn.Linear(2 * H, H)
        self.node2 = nn.Linear(H, H)
        self.coord1 = nn.Linear(H, H)
        self.coord2 = nn.Linear(H, 1, bias=False)
        self.coord2.xavier_gain = 0.001  # read by init_parameters
        self.coords_range = float(coords_range)

    def _messages(self, pre):
        """Edge pre-activations ``[..., H]`` -> gated messages m ``[..., H]`` and tanh(phi_x(m))
        ``[..., 1]``. Without autograd (sampling) activations run in place: fewer big
        allocations, whose page faults cost as much as the arithmetic on CPU."""
        inplace = not torch.is_grad_enabled()
        m = _linear_silu(F.silu(pre, inplace=inplace), self.edge2)
        gate = torch.sigmoid(self.att(m))                        # attention gate
        m = m.mul_(gate) if inplace else m * gate
        return m, torch.tanh(self.coord2(_linear_silu(m, self.coord1)))

    def _node_update(self, h, agg):
        return h + self.node2(_linear_silu(torch.cat([h, agg], dim=-1), self.node1))

    def forward(self, h, x, a0, nbr, update_h: bool = True):
        H = self.hidden
        diff = x.unsqueeze(2) - _neighbours(x, nbr)              # [B, N, N-1, D]: x_i - x_j
        radial = diff.pow(2).sum(-1, keepdim=True)               # [B, N, N-1, 1]
        W = self.edge1.weight
        src = F.linear(h, W[:, :H], self.edge1.bias)             # [B, N, H]
        dst = F.linear(h, W[:, H:2 * H])
        pre = _neighbours(dst, nbr)                              # [B, N, N-1, H] (fresh tensor)
        pair_terms = torch.cat([radial, a0], -1).view(-1, 2)     # both rank-one terms: one
        if torch.is_grad_enabled():                              # [E, 2] @ [2, H] product
            # out of place: in-place ops on views make autograd clone and copy the [E, H]
            # gradient twice per layer (CopySlices; DW-4 training ~8 copies of 3 MB per step)
            pre = torch.addmm((pre + src.unsqueeze(2)).view(-1, H), pair_terms,
                              W[:, 2 * H:].t()).view(pre.shape)
        else:
            pre.add_(src.unsqueeze(2))
            pre.view(-1, H).addmm_(pair_terms, W[:, 2 * H:].t())
        m, phi = self._messages(pre)
        unit = diff / (torch.sqrt(radial + 1e-8) + 1.0)
        x = x + (unit * phi).sum(2) * self.coords_range
        return (self._node_update(h, m.sum(2)) if update_h else h), x

    def forward_first(self, h0, x, pairs, update_h: bool = True):
        """The first layer, where every node carries the same h0 ``[B, H]`` (h = t) and the edge
        attribute equals the current squared distance: m_ij = m_ji and phi_ij = phi_ji, so the
        edge networks run on the N(N-1)/2 unordered pairs only (same function, half the work).
        Returns h ``[B, N, H]``, x and a0 ``[B, N, N-1, 1]``."""
        pi, pj, pair_of, sign, incidence = pairs
        H, N = self.hidden, x.shape[1]
        diff = x[:, pi] - x[:, pj]                               # [B, P, D]
        radial = diff.pow(2).sum(-1, keepdim=True)               # [B, P, 1] (= a0 here)
        W = self.edge1.weight
        c = F.linear(h0, W[:, :H] + W[:, H:2 * H], self.edge1.bias)          # [B, H]
        pre = torch.addcmul(c.unsqueeze(1), radial, W[:, 2 * H] + W[:, 2 * H + 1])  # [B, P, H]
        m, phi = self._messages(pre)
        unit = diff / (torch.sqrt(radial + 1e-8) + 1.0)
        trans = _neighbours(unit * phi, pair_of) * sign.unsqueeze(-1)  # [B, N, N-1, D], antisym.
        x = x + trans.sum(2) * self.coords_range
        h = h0.unsqueeze(1).expand(-1, N, H)
        if update_h:  # node i sums the messages of its N-1 pairs: [N, P] incidence @ [B, P, H]
            h = self._node_update(h, torch.matmul(incidence, m))
        return h, x, _neighbours(radial, pair_of)


class EGNN(nn.Module):
    """Official ``EGNN_dynamics``: ``(t [B] or [1], x [B, N*D]) -> [B, N*D]`` mean-free."""

    def __init__(self, n_particles: int, spatial_dim: int, hidden: int = 128, n_layers: int = 3,
                 coords_range: float = 15.0):
        super().__init__()
        self.n_particles, self.spatial_dim, self.hidden = n_particles, spatial_dim, hidden
        self.register_buffer("nbr", neighbour_index(n_particles), persistent=False)
        for name, v in zip(("pi", "pj", "pair_of", "sign"), pair_index(n_particles)):
            self.register_buffer(name, v, persistent=False)
        incidence = torch.zeros(n_particles, self.pi.numel())   # [N, P]: 1 where i is in pair p
        incidence[self.pi, torch.arange(self.pi.numel())] = 1.0
        incidence[self.pj, torch.arange(self.pi.numel())] = 1.0
        self.register_buffer("incidence", incidence, persistent=False)
        self.embedding = nn.Linear(1, hidden)
        self.layers = nn.ModuleList(EGNNLayer(hidden, coords_range / n_layers)
                                    for _ in range(n_layers))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        x0 = x.reshape(B, self.n_particles, self.spatial_dim)
        h0 = self.embedding(t.reshape(-1, 1).to(x.dtype)).expand(B, -1)  # h = t on every node
        pairs = (self.pi, self.pj, self.pair_of, self.sign.to(x.dtype),
                 self.incidence.to(x.dtype))
        last = len(self.layers) - 1  # its node update feeds nothing: the output is x only
        h, y, a0 = self.layers[0].forward_first(h0, x0, pairs, update_h=last > 0)
        for k, layer in enumerate(self.layers[1:], start=1):
            h, y = layer(h, y, a0, self.nbr, update_h=k < last)
        v = y - x0
        return (v - v.mean(1, keepdim=True)).reshape(B, -1)


@torch.no_grad()
def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """PyTorch-default init of every Linear from ``generator`` (Xavier where flagged)."""
    for m in module.modules():
        if not isinstance(m, nn.Linear):
            continue
        gain = getattr(m, "xavier_gain", None)
        if gain is not None:
            bound = gain * math.sqrt(6.0 / (m.in_features + m.out_features))
        else:
            bound = 1.0 / math.sqrt(m.in_features)
        m.weight.uniform_(-bound, bound, generator=generator)
        if m.bias is not None:
            b = 1.0 / math.sqrt(m.in_features)
            m.bias.uniform_(-b, b, generator=generator)
    return module


def build_network(kind: str, dim: int, particles: tuple[int, int] | None, hidden: int,
                  n_layers: int, generator: torch.Generator) -> nn.Module:
    """``kind`` "mlp" (``n_layers`` residual blocks) or "egnn" (``n_layers`` message-passing
    layers; needs ``particles = (n_particles, spatial_dim)``), initialised from ``generator``."""
    if kind == "mlp":
        net = ScoreMLP(dim, hidden=hidden, n_blocks=n_layers)
    elif kind == "egnn":
        if particles is None:
            raise ValueError("build_network: network 'egnn' needs a particle target "
                             "(n_particles and spatial_dim); use network 'mlp'")
        net = EGNN(particles[0], particles[1], hidden=hidden, n_layers=n_layers)
    else:
        raise ValueError(f"build_network: network must be one of ('mlp', 'egnn'), got {kind!r}")
    return init_parameters(net, generator)
