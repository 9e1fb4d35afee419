"""QK-Clip (Kimi K2's MuonClip, Kimi Team 2025): bound the attention logits by rescaling weights.

After each optimizer step, for every layer and head h, with S_max,h the largest causal attention
logit q_i . k_j / sqrt(d_head) of that step's training batch (kept by the forward pass,
trainer.model.causal_max_logit):

    gamma_h = min(1, tau / S_max,h)
    W_q[rows of h] <- sqrt(gamma_h) W_q[rows of h],   W_k[rows of h] <- sqrt(gamma_h) W_k[rows of h]

A logit is bilinear in W_q and W_k (RoPE rotates, and this variant has no norm), so on that batch head
h's logits shrink by exactly gamma_h: a head above tau comes back to tau, the others are untouched.
The forward pass is plain attention. It works the same after an AdamW or a Muon step.

The clip's activity is recorded at each probe (trainer.schema.CLIP_METRICS), over the optimizer steps
since the previous probe: clip_fraction (steps on which the head was clipped / steps) and
clip_gamma_min (the smallest gamma applied; 1 when it never fired).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .architecture import QK_NORM_KINDS


class QKClip:
    """The clip for one model: `apply()` after every optimizer step, `take()` at every probe."""

    def __init__(self, model: nn.Module, tau: float):
        self.attentions = [block.attn for block in model.blocks]
        self.tau = float(tau)
        device = self.attentions[0].max_logit.device
        shape = (len(self.attentions), self.attentions[0].n_heads)
        self.clipped = torch.zeros(shape, dtype=torch.long, device=device)  # steps clipped, per (layer, head)
        self.gamma_min = torch.ones(shape, device=device)
        self.steps = 0

    @torch.no_grad()
    def apply(self) -> torch.Tensor:
        """Clip every head whose last training logit exceeded tau; returns gamma (layers, heads)."""
        gammas = []
        for attn in self.attentions:
            s_max = attn.max_logit
            gamma = torch.where(s_max > self.tau, self.tau / s_max.clamp(min=self.tau), torch.ones_like(s_max))
            scale = gamma.sqrt().repeat_interleave(attn.d_head)[:, None]  # head h owns rows h*D .. h*D+D-1
            for proj in (attn.wq, attn.wk):
                proj.weight.mul_(scale.to(proj.weight.dtype))
            gammas.append(gamma)
        gamma = torch.stack(gammas)
        self.clipped += gamma < 1
        torch.minimum(self.gamma_min, gamma, out=self.gamma_min)
        self.steps += 1
        return gamma

    def take(self) -> list[tuple[str, int, int, float]]:
        """(metric, layer, head, value) rows over the steps since the last take, and a fresh span; no
        rows when no step was taken (the probe at step 0)."""
        if self.steps == 0:
            return []
        fraction = (self.clipped.double() / self.steps).cpu().tolist()
        gamma_min = self.gamma_min.double().cpu().tolist()
        rows = []
        for layer, (fracs, gammas) in enumerate(zip(fraction, gamma_min)):
            for head, (f, g) in enumerate(zip(fracs, gammas)):
                rows += [("clip_fraction", layer, head, f), ("clip_gamma_min", layer, head, g)]
        self.clipped.zero_()
        self.gamma_min.fill_(1.0)
        self.steps = 0
        return rows

    def state_dict(self) -> dict:
        return {"clipped": self.clipped.cpu(), "gamma_min": self.gamma_min.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.clipped.copy_(state["clipped"])
        self.gamma_min.copy_(state["gamma_min"])
        self.steps = int(state["steps"])


def qk_clip_for(model: nn.Module, qk_norm: str, tau: float) -> QKClip | None:
    """The trial's clip when its variant is qk_clip, else None."""
    return QKClip(model, tau) if QK_NORM_KINDS[qk_norm].logits == "clip" else None
