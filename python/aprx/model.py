"""A Qwen2-architecture decoder in plain torch, with a chunked LM-head cross-entropy.

Module and parameter names match ``transformers.Qwen2ForCausalLM`` exactly
(``model.embed_tokens.weight``, ``model.layers.N.self_attn.q_proj.weight``, ...,
``model.norm.weight``, ``lm_head.weight``), so HF safetensors load with no renaming
(:mod:`aprx.checkpoint`).

The loss never materialises the full ``[tokens, vocab]`` fp32 logits: :func:`linear_cross_entropy`
walks the tokens in chunks, computing each chunk's logits, log-sum-exp and the gradients with
respect to the hidden states and the LM-head weight in the same pass (a fused custom autograd
function), so peak extra memory is one ``[chunk, vocab]`` fp32 buffer.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .preflight import PRESETS, ModelConfig, preset_config, resolve_model_config

__all__ = [
    "ModelConfig",
    "PRESETS",
    "preset_config",
    "resolve_model_config",
    "CausalLM",
    "build_model",
    "linear_cross_entropy",
    "default_loss_chunk",
]


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.inv_freq: torch.Tensor
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype):
        pos = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq.to(device=device, dtype=torch.float32)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    # q, k: [batch, heads, seq, head_dim]; cos, sin: [seq, head_dim]
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        h, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = nn.Linear(h, h, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(h, kv, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(h, kv, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)
        rep = self.num_heads // self.num_kv_heads
        if rep > 1:  # grouped-query attention: each kv head serves `rep` consecutive q heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The transformer trunk: embeddings, layers, final norm -> hidden states."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.gradient_checkpointing = False

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(input_ids.shape[1], x.device, x.dtype)
        for layer in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        return self.norm(x)


class CausalLM(nn.Module):
    """Qwen2ForCausalLM-compatible model. ``forward(ids)`` -> logits; ``loss(ids, targets)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.loss_chunk: Optional[int] = None

    def reset_parameters(self, seed: Optional[int] = None) -> None:
        """HF-style init: N(0, initializer_range) weights, zero biases, unit norms."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(seed)
        std = self.config.initializer_range
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    t = torch.empty(p.shape, dtype=torch.float32).normal_(0.0, std, generator=gen)
                    p.copy_(t)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full logits ``[batch, seq, vocab]`` (for evaluation and parity tests)."""
        return self.lm_head(self.model(input_ids))

    def loss(
        self, input_ids: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
    ) -> torch.Tensor:
        """Mean next-token cross-entropy; ``targets`` are already shifted (``ids[t+1]``)."""
        hidden = self.model(input_ids)
        return linear_cross_entropy(
            hidden,
            self.lm_head.weight,
            targets,
            chunk_size=self.loss_chunk,
            ignore_index=ignore_index,
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(
    cfg: ModelConfig,
    *,
    seed: Optional[int] = None,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
) -> CausalLM:
    """A freshly initialised model (deterministic for a given ``seed``)."""
    model = CausalLM(cfg)
    model.reset_parameters(seed)
    return model.to(device=device, dtype=dtype)


# -- chunked (fused) linear + cross-entropy ---------------------------------------------------


def default_loss_chunk(
    vocab_size: int, budget_bytes: Optional[int] = None, device: Optional[torch.device] = None
) -> int:
    """Tokens per chunk so that one chunk's fp32 logits take about ``budget_bytes``: 1 GiB on
    CUDA (larger matmuls keep the GPU busy; README has the H200 numbers), else 256 MiB."""
    if budget_bytes is None:
        on_cuda = device is not None and torch.device(device).type == "cuda"
        budget_bytes = 1 << 30 if on_cuda else 1 << 28
    return max(16, budget_bytes // (4 * vocab_size))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, ignore_index, need_grad):  # type: ignore
        n = hidden.shape[0]
        acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        valid = targets != ignore_index
        count = valid.sum().clamp(min=1).to(acc)
        safe_t = torch.where(valid, targets, torch.zeros_like(targets))
        loss_sum = torch.zeros((), dtype=acc, device=hidden.device)
        need_h, need_w = (
            need_grad and ctx.needs_input_grad[0],
            need_grad and ctx.needs_input_grad[1],
        )
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            h = hidden[s:e]
            logits = (h @ weight.t()).to(acc)  # [c, V], the only [c, V] buffer
            rows = torch.arange(e - s, device=hidden.device)
            t = safe_t[s:e]
            tgt = logits[rows, t]  # a copy, taken before the in-place ops below
            # one exp pass gives both the log-sum-exp and (if needed) the softmax
            m = logits.amax(dim=-1, keepdim=True)
            z = logits.sub_(m).exp_()
            total = z.sum(dim=-1, keepdim=True)
            lse = (m + total.log()).squeeze(1)
            v = valid[s:e]
            loss_sum += torch.where(v, lse - tgt, torch.zeros_like(lse)).sum()
            if need_h or need_w:
                # d(loss_sum)/d(logits) = softmax - onehot, zero on ignored rows (in place)
                probs = z.div_(total)
                probs[rows, t] -= 1.0
                probs.mul_(v[:, None].to(probs.dtype))
                g = probs.to(hidden.dtype)
                if need_h:
                    torch.mm(g, weight, out=grad_h[s:e])
                if need_w:
                    if g.dtype == acc:
                        grad_w.addmm_(g.t(), h)
                    else:
                        grad_w.add_(g.t() @ h)  # bf16 product, accumulated in fp32
                del g, probs
            del z, logits
        if need_h:
            grad_h /= count.to(grad_h.dtype)
        if need_w:
            grad_w /= count
        ctx.save_for_backward(
            grad_h if need_h else torch.empty(0), grad_w if need_w else torch.empty(0)
        )
        ctx.need = (need_h, need_w)
        ctx.w_dtype = weight.dtype
        return loss_sum / count

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore
        grad_h, grad_w = ctx.saved_tensors
        need_h, need_w = ctx.need
        gh = grad_h * grad_out.to(grad_h.dtype) if need_h else None
        gw = (grad_w * grad_out).to(ctx.w_dtype) if need_w else None
        return gh, gw, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: Optional[int] = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, targets)`` (mean over non-ignored targets), chunked.

    ``hidden`` ``[..., H]``, ``weight`` ``[V, H]``, ``targets`` ``[...]``. Under autocast the
    matmuls run in the autocast dtype while log-sum-exp and the loss are fp32.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1).to(torch.long)
    if h.shape[0] != t.shape[0]:
        raise ValueError(f"{h.shape[0]} hidden rows but {t.shape[0]} targets")
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        h, w = h.to(dt), weight.to(dt)
    else:
        w = weight.to(h.dtype)
    chunk = chunk_size or default_loss_chunk(weight.shape[0], device=h.device)
    need_grad = torch.is_grad_enabled() and (h.requires_grad or w.requires_grad)
    with torch.autocast(device_type=dev, enabled=False):
        return _LinearCrossEntropy.apply(h, w, t, int(chunk), ignore_index, need_grad)
