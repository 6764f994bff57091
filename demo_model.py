"""A tiny dense detector, so the training demo's consumer does real work with the targets.

It is not meant to detect well: it is the smallest model whose step has the shape of a real
detector's (uint8 batch in, per-cell class logits and box regression out, a loss built from
the target boxes), so a data-loading benchmark can show how the loader and a training step
share the cores. The head is CenterNet-like: the cell holding a box's centre is responsible
for it, with a focal loss on the class map and an L1 loss on the box at responsible cells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TinyDetector", "assign_targets", "detection_loss", "train_step"]

_MAX_LOG_SIZE = 8.0  # a box's log size in cells: e**8 cells is far past any frame, and exp stays finite

Target = dict[str, Any]

# Thermal frames are dull grey on average; fixed constants keep the model free of data stats.
_MEAN, _STD = 0.5, 0.25
_PRIOR = 0.01  # initial foreground probability of every cell (RetinaNet's prior)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyDetector(nn.Module):
    """Stride-16 dense detector: ``uint8 [B, 1, H, W]`` → class logits and box regression.

    The input is average-pooled 4x before the first convolution: full-resolution convolutions
    would make the model, not the data, the bottleneck on a small CPU, which is not what the
    demo is for.

    Args:
        num_classes: foreground classes; dataset label ``l`` (1..K) is channel ``l - 1``.
        width: channels of the first convolution (later ones have twice as many); the step's
            cost grows with ``width ** 2``.
    """

    stride = 16

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError(f"num_classes and width must be positive, got {num_classes}, {width}")
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.AvgPool2d(4),
            _conv(1, width, 2),
            _conv(width, 2 * width, 2),
            _conv(2 * width, 2 * width, 1),
            _conv(2 * width, 2 * width, 1),
        )
        self.cls_head = nn.Conv2d(2 * width, num_classes, 1)
        self.box_head = nn.Conv2d(2 * width, 4, 1)
        nn.init.constant_(self.cls_head.bias, -math.log((1 - _PRIOR) / _PRIOR))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(class logits [B, K, H/16, W/16], boxes [B, 4, H/16, W/16])``."""
        x = (images.float() / 255.0 - _MEAN) / _STD
        features = self.body(x)
        return self.cls_head(features), self.box_head(features)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, max_detections: int = 100) -> list[dict[str, torch.Tensor]]:
        """Detections as torchvision's models return them: per image ``{"boxes"`` xyxy in the
        input's pixels, ``"scores"``, ``"labels"`` 1..K``}``, the ``max_detections`` best
        (class, cell) pairs decoded as ``assign_targets`` encodes a box."""
        was_training = self.training
        self.eval()
        logits, regression = self(images)
        self.train(was_training)
        _, _, height, width = logits.shape
        scores = logits.sigmoid().flatten(1)  # [B, K * h * w]
        found = []
        for b, (best, index) in enumerate(zip(*scores.topk(min(max_detections, scores.shape[1]), dim=1), strict=True)):
            label, cell = index // (height * width), index % (height * width)
            iy, ix = cell // width, cell % width
            offset_x, offset_y, log_w, log_h = regression[b, :, iy, ix]
            cx, cy = (ix + 0.5 + offset_x) * self.stride, (iy + 0.5 + offset_y) * self.stride
            half_w = log_w.clamp(max=_MAX_LOG_SIZE).exp() * self.stride / 2
            half_h = log_h.clamp(max=_MAX_LOG_SIZE).exp() * self.stride / 2
            boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)
            found.append({"boxes": boxes, "scores": best, "labels": label + 1})
        return found


def assign_targets(
    targets: Sequence[Target], shape: tuple[int, int, int, int], stride: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense training targets from per-image boxes: the centre cell of each box owns it.

    Returns:
        ``(heat [B, K, h, w] float 0/1, box [B, 4, h, w], owned [B, h, w] bool)``, where a box
        is encoded as its centre's offset from the cell centre (in cells) and the log of its
        size (in cells). Two boxes sharing a centre cell: the later one wins.
    """
    batch, num_classes, height, width = shape
    heat = torch.zeros(shape)
    box = torch.zeros((batch, 4, height, width))
    owned = torch.zeros((batch, height, width), dtype=torch.bool)
    for b, target in enumerate(targets):
        boxes, labels = target["boxes"].float().reshape(-1, 4), target["labels"].long().reshape(-1)
        if not len(boxes):
            continue
        if labels.min() < 1 or labels.max() > num_classes:
            raise ValueError(f"labels must be in 1..{num_classes}, got {labels.tolist()}")
        centre = (boxes[:, :2] + boxes[:, 2:]) / (2 * stride)
        size = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3) / stride
        ix = centre[:, 0].long().clamp(0, width - 1)
        iy = centre[:, 1].long().clamp(0, height - 1)
        heat[b, labels - 1, iy, ix] = 1.0
        offset = centre - torch.stack([ix, iy], dim=1).float() - 0.5
        box[b][:, iy, ix] = torch.cat([offset, size.log()], dim=1).T  # [4, N]: adjacent indices
        owned[b, iy, ix] = True
    return heat, box, owned


def _focal(logits: torch.Tensor, heat: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25) -> torch.Tensor:
    """Summed sigmoid focal loss: almost every cell is background, plain BCE drowns the rest."""
    ce = F.binary_cross_entropy_with_logits(logits, heat, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * heat + (1 - p) * (1 - heat)
    alpha_t = alpha * heat + (1 - alpha) * (1 - heat)
    return (alpha_t * (1 - p_t) ** gamma * ce).sum()


def detection_loss(
    outputs: tuple[torch.Tensor, torch.Tensor], targets: Sequence[Target], stride: int = TinyDetector.stride
) -> dict[str, torch.Tensor]:
    """``{"loss", "cls", "box"}``: focal class loss + L1 box loss, per responsible cell."""
    logits, boxes = outputs
    heat, box_target, owned = assign_targets(targets, tuple(logits.shape), stride)
    positives = max(1, int(owned.sum()))
    cls = _focal(logits, heat) / positives
    mask = owned[:, None].expand_as(boxes)
    box = F.l1_loss(boxes[mask], box_target[mask], reduction="sum") / positives
    return {"loss": cls + box, "cls": cls.detach(), "box": box.detach()}


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, targets: Sequence[Target]
) -> float:
    """One optimisation step on a batch; returns the loss before the update."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    losses = detection_loss(model(images), targets)
    losses["loss"].backward()
    optimizer.step()
    return float(losses["loss"].detach())
