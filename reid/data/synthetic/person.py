"""Drawing one person: body, clothing, hair, hat and bag as one shot sees them.

The same identity looks different from the front, the back and the side (a logo only from the
front, a backpack as straps from the front and as a block from the back), as a real person does.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from reid.data.synthetic.identity import RGB, Identity
from reid.data.synthetic.shot import Shot


def _upper_pattern(ident: Identity, view: str, w: int, h: int, unit: float) -> np.ndarray:
    """The torso's clothing as an h x w x 3 array (before masking to the torso's shape)."""
    yy, xx = np.mgrid[0:h, 0:w]
    period = max(2, int(ident.stripe * unit))
    second = {
        "solid": np.zeros((h, w), bool),
        "hstripes": (yy // period) % 2 == 1,
        "vstripes": (xx // period) % 2 == 1,
        "check": ((yy // period) + (xx // period)) % 2 == 1,
        "twotone": yy < 0.4 * h,
        # an open jacket shows the shirt in front; a chest logo is only seen from the front
        "jacket": (np.abs(xx - w / 2) < 0.16 * w) & (view == "front"),
        "logo": ((xx - w / 2) ** 2 + (yy - 0.35 * h) ** 2 < (0.2 * w) ** 2) & (view == "front"),
    }[ident.pattern]
    return np.where(second[..., None], np.array(ident.upper2), np.array(ident.upper))


def _paint(img: Image.Image, polygon: list[tuple[float, float]], fill: np.ndarray) -> None:
    """Paste ``fill`` (an array as large as the polygon's bounding box) inside ``polygon``."""
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    x0, y0 = int(np.floor(min(xs))), int(np.floor(min(ys)))
    h, w = fill.shape[:2]
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in polygon], fill=255)
    img.paste(Image.fromarray(fill.astype(np.uint8)), (x0, y0), mask)


def _limb(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float],
          width: float, colour: RGB) -> None:
    draw.line([a, b], fill=colour, width=max(1, int(round(width))))
    r = width / 2
    draw.ellipse([b[0] - r, b[1] - r, b[0] + r, b[1] + r], fill=colour)


def draw_person(img: Image.Image, ident: Identity, shot: Shot) -> None:
    """Draw the person of ``ident`` as ``shot`` sees them, onto ``img`` (in place)."""
    draw = ImageDraw.Draw(img)
    s, cx, top = shot.height, shot.cx, shot.feet - shot.height
    side = shot.view == "side"
    half_w = 0.125 * s * ident.build * (0.62 if side else 1.0)
    # as seen in the image, bags on the person's right appear on the left from the front
    bag_x = -ident.bag_side if shot.view == "front" else ident.bag_side
    if side:
        bag_x = -shot.facing
    shoulder_y, hip_y, knee_y = top + 0.16 * s, top + 0.52 * s, top + 0.74 * s
    swing = np.sin(shot.phase)

    if ident.bag == "backpack" and side:
        bx = cx + bag_x * half_w
        draw.rectangle([bx - 0.09 * s, shoulder_y + 0.02 * s, bx + 0.09 * s, top + 0.44 * s],
                       fill=ident.bag_colour)
    if ident.long_hair and shot.view != "back":
        draw.rectangle([cx - 0.07 * s, top + 0.05 * s, cx + 0.07 * s, top + 0.24 * s],
                       fill=ident.hair)

    _draw_legs(draw, ident, shot, cx, hip_y, knee_y, swing)
    torso = [(cx - half_w, shoulder_y), (cx + half_w, shoulder_y),
             (cx + 0.85 * half_w, hip_y), (cx - 0.85 * half_w, hip_y)]
    x0, x1 = int(np.floor(cx - half_w)), int(np.floor(cx + half_w))
    y0, y1 = int(np.floor(shoulder_y)), int(np.floor(hip_y))
    _paint(img, torso, _upper_pattern(ident, shot.view, x1 - x0 + 2, y1 - y0 + 2, s))
    _draw_arms(draw, ident, shot, cx, half_w, shoulder_y, swing)
    _draw_head(draw, ident, shot, cx, top)
    _draw_bag(draw, ident, shot, cx, half_w, shoulder_y, hip_y, bag_x)


def _draw_legs(draw: ImageDraw.ImageDraw, ident: Identity, shot: Shot, cx: float,
               hip_y: float, knee_y: float, swing: float) -> None:
    s, feet = shot.height, shot.feet
    leg_w = 0.08 * s * ident.build ** 0.5
    if shot.view == "side":
        stride = 0.13 * s * swing
        feet_x = (cx + stride, cx - stride)
        hips_x = (cx, cx)
    else:
        spread = 0.02 * s * abs(swing)
        hips_x = (cx - 0.05 * s, cx + 0.05 * s)
        feet_x = (hips_x[0] - spread, hips_x[1] + spread)
    # trousers cover the leg; shorts stop above the knee; a skirt is drawn over bare legs
    cloth_end = {"trousers": 1.0, "shorts": 0.45, "skirt": 0.0}[ident.lower_style]
    for hx, fx in zip(hips_x, feet_x):
        knee = (hx + cloth_end * (fx - hx), hip_y + cloth_end * (feet - 0.03 * s - hip_y))
        _limb(draw, (hx, hip_y), (fx, feet - 0.03 * s), leg_w, ident.skin)
        if cloth_end > 0:
            _limb(draw, (hx, hip_y), knee, leg_w * 1.1, ident.lower)
        draw.ellipse([fx - 0.055 * s, feet - 0.05 * s, fx + 0.055 * s, feet], fill=ident.shoes)
    if ident.lower_style == "skirt":
        width = 0.11 * s * ident.build
        draw.polygon([(cx - width, hip_y), (cx + width, hip_y), (cx + 1.5 * width, knee_y),
                      (cx - 1.5 * width, knee_y)], fill=ident.lower)
    else:
        draw.rectangle([cx - 0.1 * s * ident.build, hip_y - 0.01 * s,
                        cx + 0.1 * s * ident.build, hip_y + 0.06 * s], fill=ident.lower)


def _draw_arms(draw: ImageDraw.ImageDraw, ident: Identity, shot: Shot, cx: float,
               half_w: float, shoulder_y: float, swing: float) -> None:
    s = shot.height
    arm_w, hand_y = 0.06 * s, shoulder_y + 0.36 * s
    if shot.view == "side":
        pairs = [((cx, shoulder_y + 0.02 * s), (cx - 0.1 * s * swing, hand_y))]
    else:
        pairs = [((cx + d * half_w, shoulder_y + 0.02 * s),
                  (cx + d * (half_w + 0.03 * s), hand_y)) for d in (-1, 1)]
    for shoulder, hand in pairs:
        _limb(draw, shoulder, hand, arm_w, ident.skin)
        sleeve_end = 1.0 if ident.long_sleeves else 0.4
        elbow = (shoulder[0] + sleeve_end * (hand[0] - shoulder[0]),
                 shoulder[1] + sleeve_end * (hand[1] - shoulder[1]))
        _limb(draw, shoulder, elbow, arm_w * 1.05, ident.upper)


def _draw_head(draw: ImageDraw.ImageDraw, ident: Identity, shot: Shot, cx: float,
               top: float) -> None:
    s = shot.height
    r = 0.065 * s
    hy = top + 0.075 * s
    hx = cx + (0.015 * s * shot.facing if shot.view == "side" else 0.0)
    box = [hx - r, hy - r, hx + r, hy + r]
    draw.ellipse(box, fill=ident.hair if shot.view == "back" else ident.skin)
    draw.chord([hx - r, hy - r * 1.05, hx + r, hy + r * 0.7], 180, 360, fill=ident.hair)
    if ident.long_hair and shot.view == "back":
        draw.rectangle([hx - r, hy, hx + r, top + 0.25 * s], fill=ident.hair)
    if ident.hat is not None:
        draw.rectangle([hx - 1.3 * r, hy - 0.45 * r, hx + 1.3 * r, hy - 0.2 * r], fill=ident.hat)
        draw.chord([hx - r, hy - 1.25 * r, hx + r, hy + 0.3 * r], 180, 360, fill=ident.hat)


def _draw_bag(draw: ImageDraw.ImageDraw, ident: Identity, shot: Shot, cx: float, half_w: float,
              shoulder_y: float, hip_y: float, bag_x: int) -> None:
    s, colour = shot.height, ident.bag_colour
    strap = max(1, int(0.02 * s))
    if ident.bag == "backpack" and shot.view == "back":
        draw.rectangle([cx - 0.8 * half_w, shoulder_y + 0.03 * s, cx + 0.8 * half_w,
                        shoulder_y + 0.3 * s], fill=colour)
    elif ident.bag == "backpack" and shot.view == "front":
        for d in (-0.55, 0.55):
            draw.line([(cx + d * half_w, shoulder_y), (cx + d * half_w, hip_y - 0.08 * s)],
                      fill=colour, width=strap)
    elif ident.bag == "shoulder":
        bx = cx + bag_x * (half_w + 0.04 * s)
        draw.line([(cx - bag_x * half_w * 0.8, shoulder_y), (bx, hip_y - 0.02 * s)],
                  fill=colour, width=strap)
        draw.rectangle([bx - 0.06 * s, hip_y - 0.06 * s, bx + 0.06 * s, hip_y + 0.06 * s],
                       fill=colour)
    elif ident.bag == "hand":
        bx = cx + bag_x * (half_w + 0.05 * s)
        draw.rectangle([bx - 0.05 * s, hip_y, bx + 0.05 * s, hip_y + 0.13 * s],
                       fill=colour)
