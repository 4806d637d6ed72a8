"""An independent NumPy (float64) implementation of docs/semantics.md (The model), for the model tests.

Written from the spec, not from model.py: explicit per-head loops, HF-style weight names.
"""

from __future__ import annotations

import numpy as np


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, theta):
    """x [T, H]; NeoX halves: rope(x) = x*cos + rotate_half(x)*sin."""
    h = x.shape[-1]
    inv_freq = theta ** (-np.arange(0, h // 2) * 2.0 / h)
    ang = positions[:, None] * inv_freq[None, :]
    ang = np.concatenate([ang, ang], axis=-1)
    rot = np.concatenate([-x[:, h // 2:], x[:, : h // 2]], axis=-1)
    return x * np.cos(ang) + rot * np.sin(ang)


def softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def hf_weights(params, cfg) -> dict[str, np.ndarray]:
    """Our params as HF-named float64 [out, in] matrices (the layout the release stores)."""
    p = {k: np.asarray(v, np.float64) if not isinstance(v, dict) else {kk: np.asarray(vv, np.float64) for kk, vv in v.items()}
         for k, v in params.items()}
    w = {"wte": p["wte"], "ln_f": p["ln_f"], "head": p["wte"] if cfg.weight_tying else p["ff_out"].T}
    for i in range(cfg.n_layers):
        L = {k: v[i] for k, v in p["layers"].items()}
        w[f"{i}.attn_norm"] = L["attn_norm"]
        w[f"{i}.ff_norm"] = L["ff_norm"]
        w[f"{i}.q_proj"] = L["q_proj"].reshape(cfg.d_model, -1).T
        w[f"{i}.k_proj"] = L["k_proj"].reshape(cfg.d_model, -1).T
        w[f"{i}.v_proj"] = L["v_proj"].reshape(cfg.d_model, -1).T
        w[f"{i}.attn_out"] = L["attn_out"].reshape(-1, cfg.d_model).T
        w[f"{i}.ff_proj"] = L["ff_proj"].T
        w[f"{i}.up_proj"] = L["up_proj"].T
        w[f"{i}.ff_out"] = L["ff_out"].T
    return w


def reference_logits(w: dict, cfg, tokens: np.ndarray, key_mask: np.ndarray | None = None) -> np.ndarray:
    """Logits [B, T, V] of one batch, row by row, head by head."""
    b, t = tokens.shape
    hd = cfg.head_dim
    group = cfg.n_heads // cfg.n_kv_heads
    out = np.zeros((b, t, cfg.vocab_size))
    positions = np.arange(t, dtype=np.float64)
    for r in range(b):
        x = w["wte"][tokens[r]]
        keys_ok = np.ones(t, bool) if key_mask is None else key_mask[r].astype(bool)
        for i in range(cfg.n_layers):
            a = rms_norm(x, w[f"{i}.attn_norm"], cfg.rms_norm_eps)
            q = a @ w[f"{i}.q_proj"].T
            k = a @ w[f"{i}.k_proj"].T
            v = a @ w[f"{i}.v_proj"].T
            heads = []
            for h in range(cfg.n_heads):
                kvh = h // group
                qh = rope(q[:, h * hd:(h + 1) * hd], positions, cfg.rope_theta)
                kh = rope(k[:, kvh * hd:(kvh + 1) * hd], positions, cfg.rope_theta)
                vh = v[:, kvh * hd:(kvh + 1) * hd]
                scores = qh @ kh.T / np.sqrt(hd)  # no causal mask
                scores = np.where(keys_ok[None, :], scores, -np.inf)
                heads.append(softmax(scores) @ vh)
            x = x + np.concatenate(heads, axis=-1) @ w[f"{i}.attn_out"].T
            n = rms_norm(x, w[f"{i}.ff_norm"], cfg.rms_norm_eps)
            gate = n @ w[f"{i}.ff_proj"].T
            silu = gate / (1.0 + np.exp(-gate))
            x = x + (silu * (n @ w[f"{i}.up_proj"].T)) @ w[f"{i}.ff_out"].T
        out[r] = rms_norm(x, w["ln_f"], cfg.rms_norm_eps) @ w["head"].T
    return out
