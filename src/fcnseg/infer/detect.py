"""Boxes from a detector: images in, per-image boxes in pixels out; and boxes drawn on an image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from fcnseg.accel import for_inference
from fcnseg.data.detection import resize_for_net
from fcnseg.data.palette import pascal_palette
from fcnseg.data.preprocess import preprocess, preprocessing_of
from fcnseg.detection.suppression import detect

__all__ = ["MIN_SCORE", "detect_images", "detection_records", "draw_boxes"]

MIN_SCORE = 0.3
"""The score from which boxes are drawn unless told otherwise (``fcnseg predict --min-score``, ``serve``)."""


@torch.no_grad()
def detect_images(
    model: torch.nn.Module, images: Sequence[np.ndarray], **options: Any
) -> list[dict[str, np.ndarray]]:
    """Detections of an SSD on (H, W, 3) uint8 RGB images of any sizes: per image ``boxes`` (k, 4)
    pixel corners clipped to the image, ``scores`` and ``labels``, best first.

    Each image is warped to the net's input size as in testing; ``options`` reach
    :func:`fcnseg.detection.detect` (``conf_threshold``, ``nms_threshold``, ``keep_top_k``, ...).
    """
    if not images:
        return []
    size = model.prior_spec.image_size
    device = next(model.parameters()).device
    batch = preprocess(np.stack([resize_for_net(image, size) for image in images]), preprocessing_of(model))
    loc, conf = for_inference(model.eval())(batch.to(device))
    found = detect(loc, conf, model.priors().to(device), model.prior_spec.variances, **options)
    results = []
    for image, result in zip(images, found, strict=True):
        height, width = image.shape[:2]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=device)
        boxes = (result["boxes"].clamp(0, 1) * scale).cpu().numpy()
        results.append(
            {
                "boxes": boxes,
                "scores": result["scores"].cpu().numpy(),
                "labels": result["labels"].cpu().numpy(),
            }
        )
    return results


def detection_records(detections: dict[str, np.ndarray], class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Each detection for JSON: its class name and id, its score and its pixel box (xmin, ymin, xmax, ymax)."""
    return [
        {
            "class": class_names[int(c)],
            "label": int(c),
            "score": round(float(s), 5),
            "box": [round(float(v), 2) for v in b],
        }
        for b, s, c in zip(detections["boxes"], detections["scores"], detections["labels"], strict=True)
    ]


def draw_boxes(
    image: np.ndarray, detections: dict[str, np.ndarray], class_names: Sequence[str], min_score: float = 0.0
) -> Image.Image:
    """``image`` with each box of at least ``min_score`` outlined in its class's PASCAL colour and
    labelled with the class name and score."""
    shown = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(shown)
    colours = pascal_palette(256)
    width = max(1, round(min(shown.size) / 200))
    for box, score, label in zip(
        detections["boxes"], detections["scores"], detections["labels"], strict=True
    ):
        if score < min_score:
            continue
        colour = tuple(int(c) for c in colours[int(label) % 256])
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        name = class_names[int(label)] if int(label) < len(class_names) else str(int(label))
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), text)
        lift = bottom - top + 2
        draw.rectangle([x0, y0 - lift, x0 + right - left + 4, y0], fill=colour)
        draw.text((x0 + 2, y0 - lift), text, fill=(255, 255, 255))
    return shown
