"""Toy images: a scene drawn as pixels, and written as PNG without ever leaving a truncated file behind."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

from mllm_da.toy.scene import ToyScene
from mllm_da.utils.io import atomic_write_bytes


def render_scene(scene: ToyScene) -> Image.Image:
    """Draw the scene without anti-aliasing: every pixel is the background or exactly one object's colour."""
    bg = scene.background
    image = Image.new("RGB", (scene.image_size, scene.image_size), (bg, bg, bg))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        right, bottom = x1 - 1, y1 - 1  # PIL's shape coordinates are inclusive
        if obj.shape == "circle":
            draw.ellipse((x0, y0, right, bottom), fill=obj.rgb)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, right, bottom), fill=obj.rgb)
        elif obj.shape == "triangle":
            draw.polygon([(x0, bottom), (right, bottom), ((x0 + right) // 2, y0)], fill=obj.rgb)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    return image


def png_bytes(image: Image.Image) -> bytes:
    """The PNG encoding of ``image`` (deterministic: the same pixels always give the same bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, image: Image.Image) -> Path:
    """Encode in memory and rename into place, so a crash never leaves a truncated PNG behind."""
    return atomic_write_bytes(path, png_bytes(image))
