"""Ranking and distillation losses on group scores [B, G] (column 0 = the positive, the rest negatives)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def margin_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Margin-MSE (Hofstätter et al. 2020): mean over (query, negative) of
    ((s_pos − s_neg) − (t_pos − t_neg))². Only margins are matched, so the student keeps its own score scale."""
    teacher = teacher.to(student.dtype)
    s_margin = student[:, :1] - student[:, 1:]
    t_margin = teacher[:, :1] - teacher[:, 1:]
    return ((s_margin - t_margin) ** 2).mean()


def listwise_ce(student: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the positive against its group's negatives (mean over groups)."""
    target = torch.zeros(student.shape[0], dtype=torch.long, device=student.device)
    return F.cross_entropy(student.float(), target)


def pointwise_bce(student: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on raw logits: positives labelled 1, negatives 0 (mean over pairs)."""
    labels = torch.zeros_like(student, dtype=torch.float32)
    labels[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(student.float(), labels)


def combined_loss(
    terms: list[str], student: torch.Tensor, teacher: torch.Tensor | None, distill_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the named terms (margin-mse weighted by `distill_weight` when a ranking term is present);
    returns the loss and each term's value for logging."""
    total = None
    parts: dict[str, float] = {}
    for term in terms:
        if term == "listwise":
            value = listwise_ce(student)
            weight = 1.0
        elif term == "bce":
            value = pointwise_bce(student)
            weight = 1.0
        elif term == "margin-mse":
            if teacher is None:
                raise ValueError("margin-mse needs teacher scores")
            value = margin_mse(student, teacher)
            weight = distill_weight if len(terms) > 1 else 1.0
        else:
            raise ValueError(f"unknown loss term {term!r}")
        parts[term] = float(value.detach())
        total = weight * value if total is None else total + weight * value
    return total, parts
