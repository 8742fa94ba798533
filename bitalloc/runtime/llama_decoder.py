"""Batch-1 decoding of a Llama-architecture model on the kernels: few launches, static buffers, CUDA graphs.

A decode step is, per layer: RMSNorm, the fused q/k/v projection, attention with rotary embedding and the
KV-cache write (``decode_attention``, split along the context), the output projection added into the residual
stream by the GEMV itself, RMSNorm, the fused gate/up projection, SiLU-and-multiply, the down projection added
into the residual; then the final norm, the LM head and the greedy next token. A layer norm whose weight is
all ones (a random model's, or any Llama's after ``models/norm_folding.py``: model spec ``+fold-norms``) runs
inside the GEMVs that read it (``kernels/row_norm.py``), not as its own launch. Every buffer is allocated once
and the position lives on the device (incremented by the step), so a captured CUDA graph replays every step.
The attention launch's grid follows the context (one program per query head and chunk of cached positions,
rounded up to a power of two: idle programs cost the step time), so ``capture`` records one graph per such
grid and ``step`` replays the one for its position. Model types: Llama, Mistral (within its sliding window)
and Qwen2 (q/k/v biases); the rope tables come from the model's own rotary module (static rope types). Weights
may be float16 ``nn.Linear`` (cuBLAS), ``QuantLinear`` of any candidate (the registry's kernel, or the
reference path with a warning) or ``PackedLinear`` (its own torch forward, with a warning: k-means, nested,
lookup-table, W8A8/W4A4 formats). On Hopper the decoder's own kernels use programmatic dependent launch
(``kernels/_pdl.py``): while the kernel before it still runs, each GEMV loads its first weights or, where its
tuned entry says ``l2_slice``, asks L2 for its whole slice (``kernels/l2_prefetch.py``). The decoder copies
the weights it fuses; the source model can be dropped after.

A prompt goes in one ``prefill`` pass (batched projections on the registry's kernels for that many rows,
causal attention in torch), then decoding continues one step (one graph replay) per token.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bitalloc.errors import InvalidInput
from bitalloc.kernels._pdl import pdl_supported
from bitalloc.kernels.argmax import argmax_row
from bitalloc.kernels.decode_attention import CHUNK, AttentionWorkspace, decode_attention
from bitalloc.kernels.registry import Registry
from bitalloc.kernels.rmsnorm import rmsnorm
from bitalloc.kernels.row_norm import RAW_ROW_LIMIT, RowNorm
from bitalloc.kernels.silu_mul import silu_mul
from bitalloc.kernels.step_start import start_step
from bitalloc.runtime.prefill_attention import prefill_attention
from bitalloc.runtime.projection import FusedProjection

MODEL_TYPES = {"llama", "mistral", "qwen2"}  # same block: RMSNorm, rotate-half rope, GQA, SiLU-gated MLP
STATIC_ROPE = {"default", "linear", "llama3", "yarn"}  # frequencies independent of the sequence length
SPARE_ROWS = 2  # cache and rope rows past max_len: capture()'s warm-up steps may run there


@dataclass(frozen=True)
class DecoderDims:
    """The sizes a decode step needs, read from a transformers Llama-style config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float

    @classmethod
    def of(cls, config, max_len: int) -> DecoderDims:
        """Read and check ``config``; raise InvalidInput naming what this decoder does not run."""
        kind = getattr(config, "model_type", None)
        if kind not in MODEL_TYPES:
            raise InvalidInput(f"the decoder runs model types {sorted(MODEL_TYPES)}; got {kind!r}")
        window = (
            getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        )
        if window is not None and max_len > window:
            raise InvalidInput(
                f"the decoder attends to every cached position; this model's sliding window is {window}: "
                f"use max_len <= {window}"
            )
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in STATIC_ROPE:
            raise InvalidInput(
                f"the decoder tabulates rope once; rope type {rope_type!r} changes with the sequence length "
                f"(supported: {sorted(STATIC_ROPE)})"
            )
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise InvalidInput(f"the decoder runs SiLU-gated MLPs; this model uses hidden_act={act!r}")
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        if head_dim & (head_dim - 1) or heads % kv_heads:
            raise InvalidInput(
                f"the decoder needs a power-of-two head dim and query heads a multiple of KV heads; "
                f"got head_dim={head_dim}, heads={heads}, kv_heads={kv_heads}"
            )
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
            eps=float(config.rms_norm_eps),
        )


@dataclass(frozen=True)
class DecoderLayer:
    """One layer's norms (into the decoder's ``normed`` row), fused projections and KV cache
    ``(kv_heads, max_len, head_dim)``."""

    input_norm: RowNorm
    qkv: FusedProjection
    o: FusedProjection
    post_norm: RowNorm
    gate_up: FusedProjection
    down: FusedProjection
    k_cache: torch.Tensor
    v_cache: torch.Tensor


def _check_model(model: nn.Module) -> nn.Module:
    """The inner ``LlamaModel``-like module of a causal LM, with the parts the decoder reads."""
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or any(not hasattr(inner, n) for n in needed) or not hasattr(model, "lm_head"):
        raise InvalidInput(
            f"the decoder runs Llama-architecture causal LMs (model.model.{{{', '.join(needed)}}} and "
            f"model.lm_head); got {type(model).__name__}"
        )
    return inner


class LlamaDecoder:
    """Greedy batch-1 decoding of a Llama-architecture model (float16) with fused launches."""

    def __init__(
        self,
        model: nn.Module,
        max_len: int,
        registry: Registry | None = None,
        pdl: bool | None = None,
        fuse_norms: bool = True,
    ) -> None:
        inner = _check_model(model)
        dims = DecoderDims.of(model.config, max_len)
        embed = inner.embed_tokens.weight.detach()
        if embed.dtype != torch.float16:
            raise InvalidInput(
                f"the decoder runs float16 models; convert with model.half() (got {embed.dtype})"
            )
        if embed.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise InvalidInput(
                f"the decoder runs its kernels on a CUDA GPU (model on {embed.device.type}); move the model "
                "with model.cuda(), or set TRITON_INTERPRET=1 before importing bitalloc to interpret them "
                "on the CPU"
            )
        if max_len < 1:
            raise InvalidInput(f"max_len must be at least 1, got {max_len}")
        registry = Registry.load() if registry is None else registry
        self.dims = dims
        self.max_len = max_len
        self.rows = max_len + SPARE_ROWS  # cache and rope rows
        self.device = embed.device
        self.pdl = pdl_supported(self.device) if pdl is None else pdl and pdl_supported(self.device)
        self.fuse_norms = fuse_norms  # weightless RMSNorms inside the GEMVs that read them (``row_norm.py``)
        self.normed = torch.zeros(1, dims.hidden, dtype=torch.float16, device=self.device)
        self.embed = embed
        self.final_norm = RowNorm.of(inner.norm.weight.detach(), dims.eps, self.normed)
        self.lm_head = FusedProjection([model.lm_head], registry)
        self.layers = [self._layer(block, registry) for block in inner.layers]
        self.cos, self.sin = self._rotary_tables(inner.rotary_emb)
        self._allocate()
        self.position = 0  # host copy of ``pos``: the next token's position
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}  # attention splits -> the step's graph

    def _layer(self, block: nn.Module, registry: Registry) -> DecoderLayer:
        attn, mlp, d = block.self_attn, block.mlp, self.dims
        extra = [n for n in ("q_norm", "k_norm") if getattr(attn, n, None) is not None]
        if extra:
            raise InvalidInput(f"the decoder has no per-head {' / '.join(extra)} (a Qwen3-style block)")
        cache = torch.zeros(d.kv_heads, self.rows, d.head_dim, dtype=torch.float16, device=self.device)
        return DecoderLayer(
            input_norm=RowNorm.of(block.input_layernorm.weight.detach(), d.eps, self.normed),
            qkv=FusedProjection([attn.q_proj, attn.k_proj, attn.v_proj], registry),
            o=FusedProjection([attn.o_proj], registry),
            post_norm=RowNorm.of(block.post_attention_layernorm.weight.detach(), d.eps, self.normed),
            gate_up=FusedProjection([mlp.gate_proj, mlp.up_proj], registry),
            down=FusedProjection([mlp.down_proj], registry),
            k_cache=cache,
            v_cache=cache.clone(),
        )

    def _rotary_tables(self, rotary: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos``, ``sin (max_len + SPARE_ROWS, head_dim)`` float32 from the model's rotary module."""
        rows = self.rows
        positions = torch.arange(rows, device=self.device)[None]  # (1, rows)
        probe = torch.zeros(1, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            cos, sin = rotary(probe, positions)
        if cos.shape[-2:] != (rows, self.dims.head_dim):
            raise InvalidInput(
                f"the model's rotary tables are {tuple(cos.shape[-2:])}, the decoder needs ({rows}, "
                f"{self.dims.head_dim}): partial rotary embeddings are not supported"
            )
        return cos[0].float().contiguous(), sin[0].float().contiguous()

    def _allocate(self) -> None:
        d, dev, f16 = self.dims, self.device, torch.float16
        qkv_width = (d.heads + 2 * d.kv_heads) * d.head_dim
        if self.layers and self.layers[0].qkv.out_features != qkv_width:
            raise InvalidInput(
                f"q/k/v projections give {self.layers[0].qkv.out_features} outputs, the config {qkv_width}"
            )
        self.token = torch.zeros(1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.int32, device=dev)
        self.hidden = torch.zeros(1, d.hidden, dtype=f16, device=dev)
        self.attn = torch.zeros(1, d.heads * d.head_dim, dtype=f16, device=dev)
        self.act = torch.zeros(1, d.intermediate, dtype=f16, device=dev)
        self.logits = torch.zeros(1, self.lm_head.out_features, dtype=f16, device=dev)
        # per-layer projection outputs, zeroed by the step's first launch: the kernels add into them
        self.scratch = torch.zeros(d.layers, qkv_width + 2 * d.intermediate, dtype=f16, device=dev)
        self.workspace = AttentionWorkspace.create(d.heads, self.rows, d.head_dim, dev)
        self.qkv_width = qkv_width

    def _splits(self, position: int) -> int:
        """Attention programs per query head for a step at ``position``: one per chunk of cached positions,
        rounded up to a power of two, at most the workspace's."""
        chunks = max(1, -(-position // CHUNK))
        return min(self.workspace.m.shape[1], 1 << (chunks - 1).bit_length())

    def _forward(self, splits: int) -> None:
        """One step on the static buffers: ``token``, ``pos`` -> ``logits``, next ``token``, ``pos + 1``;
        ``splits`` attention programs per query head (any value is exact; the position's is fastest)."""
        d, pdl = self.dims, self.pdl
        start_step(self.embed, self.token, self.hidden, self.scratch)  # an ordinary launch: see _pdl.py
        for i, layer in enumerate(self.layers):
            qkv = self.scratch[i : i + 1, : self.qkv_width]  # (1, qkv_width)
            gate_up = self.scratch[i : i + 1, self.qkv_width :]  # (1, 2 * intermediate)
            self._normed_projection(layer.qkv, layer.input_norm, qkv, pdl)
            decode_attention(
                qkv,
                self.cos,
                self.sin,
                layer.k_cache,
                layer.v_cache,
                self.pos,
                self.attn,
                d.heads,
                self.workspace,
                pdl=pdl,
                splits=splits,
            )
            layer.o.run(self.attn, self.hidden, accumulate=True, pdl=pdl)  # residual add in the projection
            self._normed_projection(layer.gate_up, layer.post_norm, gate_up, pdl)
            silu_mul(gate_up, self.act, pdl=pdl)
            layer.down.run(self.act, self.hidden, accumulate=True, pdl=pdl)
        self._head(self.hidden, pdl, advance=True)

    def _normed_projection(
        self,
        projection: FusedProjection,
        norm: RowNorm,
        out: torch.Tensor,
        pdl: bool,
        hidden: torch.Tensor | None = None,
        accumulate: bool = True,
    ) -> None:
        """``out [+]= projection(rmsnorm(hidden))`` (default: the residual stream): a weightless norm inside
        the projection's GEMVs, else (or with ``fuse_norms=False``) its own launch into ``normed`` first."""
        hidden = self.hidden if hidden is None else hidden
        if self.fuse_norms and norm.unit:
            projection.run(hidden, out, accumulate=accumulate, pdl=pdl, norm=norm)
        else:
            projection.run(norm.apply(hidden, pdl), out, accumulate=accumulate, pdl=pdl)

    def _head(self, hidden: torch.Tensor, pdl: bool = False, advance: bool = False) -> None:
        """``hidden (1, hidden)`` -> the final norm, ``logits`` by the LM head, the greedy ``token`` (and with
        ``advance`` the position incremented by the same launch)."""
        self._normed_projection(self.lm_head, self.final_norm, self.logits, pdl, hidden, accumulate=False)
        argmax_row(self.logits, self.token, pdl, self.pos if advance else None)

    @property
    def launches_per_step(self) -> int:
        """Weight launches per step (norms, attention, activation and bookkeeping come on top)."""
        per_layer = sum(
            p.launches for layer in self.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)
        )
        return per_layer + self.lm_head.launches

    def reset(self) -> None:
        """Start a new sequence at position 0 (the cache is overwritten as positions are reached)."""
        self.pos.zero_()
        self.position = 0

    def capture(self) -> None:
        """Record the step as CUDA graphs, one per attention grid up to ``max_len`` (after warm-up steps that
        compile and lay out every kernel). The warm-up steps write positions ``position`` and ``position + 1``
        (not yet valid; at most ``max_len + 1``: spare rows), then the position and the next token are
        restored."""
        if self.device.type != "cuda":
            raise InvalidInput("CUDA graphs need the model on a CUDA device")
        saved, token = self.position, self.token.clone()
        graphs, stream = {}, torch.cuda.Stream()
        for splits in sorted({self._splits(p) for p in range(0, self.max_len + CHUNK, CHUNK)}):
            stream.wait_stream(torch.cuda.current_stream())
            with torch.no_grad(), torch.cuda.stream(stream):
                for _ in range(2):
                    self._forward(splits)
            torch.cuda.current_stream().wait_stream(stream)
            graphs[splits] = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graphs[splits]):
                self._forward(splits)
            self.pos.fill_(saved)
            self.token.copy_(token)
        self._graphs = graphs

    def step(self, token: int | None = None) -> torch.Tensor:
        """Decode one position: feed ``token`` (default: the previous step's greedy choice); returns the
        ``(1, vocab)`` logits buffer (overwritten by the next step)."""
        if self.position >= self.max_len:
            raise InvalidInput(
                f"the sequence reached max_len={self.max_len}; build the decoder with a larger one"
            )
        if token is not None:
            self._check_ids([token])
            self.token.fill_(token)
        splits = self._splits(self.position)
        if self._graphs:
            self._graphs[splits].replay()
        else:
            with torch.no_grad():
                self._forward(splits)
        self.position += 1
        return self.logits

    def _check_ids(self, tokens: Sequence[int]) -> None:
        """Raise InvalidInput naming the ids outside the vocabulary."""
        bad = [t for t in tokens if not 0 <= t < self.embed.shape[0]]
        if bad:
            raise InvalidInput(
                f"token ids {bad[:5]} are outside the vocabulary (0 .. {self.embed.shape[0] - 1})"
            )

    def prefill(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed ``tokens`` in one pass from the current position: batched projections (the registry's kernel
        for that many rows), causal attention over the cache (``prefill_attention``), their keys and values
        cached. Returns the last token's ``(1, vocab)`` logits (its greedy choice in ``token``, as after a
        step) and advances the position by ``len(tokens)``; ``step`` (and a captured graph) go on from it."""
        tokens = [int(t) for t in tokens]  # a list, tuple or tensor of ids
        if not tokens:
            raise InvalidInput("prefill needs at least one token")
        start, count = self.position, len(tokens)
        if start + count > self.max_len:
            raise InvalidInput(
                f"position {start} + {count} prompt tokens exceed max_len={self.max_len}; build the decoder "
                f"with max_len >= {start + count}"
            )
        self._check_ids(tokens)
        d = self.dims
        with torch.no_grad():
            hidden = self.embed[torch.tensor(tokens, device=self.device)]  # (T, hidden)
            normed = torch.empty_like(hidden)
            act = torch.empty(count, d.intermediate, dtype=hidden.dtype, device=self.device)
            peak = hidden.new_zeros(())  # the residual stream's largest magnitude (read once, at the end)
            for i, layer in enumerate(self.layers):
                peak = torch.maximum(peak, hidden.abs().max())
                rmsnorm(hidden, layer.input_norm.weight, d.eps, normed)
                qkv = layer.qkv.forward(normed)  # (T, qkv_width)
                attn = prefill_attention(
                    qkv, d.heads, d.kv_heads, self.cos, self.sin, layer.k_cache, layer.v_cache, start
                )
                if i == len(self.layers) - 1:  # every key and value is cached: only the last row goes on
                    attn, hidden, normed, act = attn[-1:], hidden[-1:].contiguous(), normed[-1:], act[-1:]
                hidden += layer.o.forward(attn)
                peak = torch.maximum(peak, hidden.abs().max())
                rmsnorm(hidden, layer.post_norm.weight, d.eps, normed)
                silu_mul(layer.gate_up.forward(normed), act)
                hidden += layer.down.forward(act)
            peak = torch.maximum(peak, hidden.abs().max())  # the final norm's row
            self._head(hidden[-1:])
            self.pos.fill_(start + count)
        self.position = start + count
        self._check_raw_rows(float(peak))
        return self.logits

    def _check_raw_rows(self, peak: float) -> None:
        """Warn when a norm runs inside the GEMVs and the residual stream (largest magnitude ``peak``, seen
        by a prompt pass; decode steps are not checked) is large enough that their float16 partial sums of
        the raw row could overflow."""
        readers = [(self.final_norm, self.lm_head)]
        readers += [(n, p) for x in self.layers for n, p in ((x.input_norm, x.qkv), (x.post_norm, x.gate_up))]
        fused = self.fuse_norms and any(norm.unit and projection.quantized for norm, projection in readers)
        if fused and peak > RAW_ROW_LIMIT:
            warnings.warn(
                f"the residual stream reaches {peak:.0f}: the norms inside the GEMVs sum the raw row in "
                f"float16, in range only below {RAW_ROW_LIMIT:.0f}; build the decoder with fuse_norms=False",
                RuntimeWarning,
                stacklevel=3,
            )

    def generate(self, prompt: Sequence[int], new_tokens: int) -> list[int]:
        """Greedy continuation of ``prompt`` (fed in one ``prefill`` pass) by ``new_tokens`` tokens."""
        if not prompt:
            raise InvalidInput("generate needs a prompt of at least one token")
        if new_tokens < 1:
            raise InvalidInput(f"generate makes at least one new token, got new_tokens={new_tokens}")
        if len(prompt) + new_tokens > self.max_len:
            raise InvalidInput(
                f"prompt ({len(prompt)}) + new tokens ({new_tokens}) exceed max_len={self.max_len}; "
                f"build the decoder with max_len >= {len(prompt) + new_tokens}"
            )
        self.reset()
        self.prefill(prompt)
        out = [int(self.token.item())]
        for _ in range(new_tokens - 1):
            self.step()
            out.append(int(self.token.item()))
        return out
