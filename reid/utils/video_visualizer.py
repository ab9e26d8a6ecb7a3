"""Tracked people drawn on a video, each identity in its own stable colour
(``reid video``; FastReID's ``fastreid.utils.video_visualizer``).

Input: a video file (read with PyAV: ``pip install 'reid-toolbox[video]'``) or a folder of
frames (images sorted in natural order, frame 1 first), and the tracks as a MOTChallenge
text file: one box per line, ``frame,id,left,top,width,height[,score,...]`` with frames
counted from 1 and boxes in pixels (commas or spaces; ``#`` comments and a header line are
skipped). Output: a folder of PNG frames (``000001.png`` ...) or a video file (``.mp4``,
``.mkv``, ``.mov``, ``.avi``), written atomically. Each box is framed and labelled
``id N`` in the colour of identity N (:func:`reid.utils.colormap.id_color`): the same person
keeps the same colour across frames, runs and videos.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image, ImageDraw, ImageFont

from reid.errors import ReidError
from reid.utils.colormap import id_color, text_color
from reid.utils.io import atomic_write

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".avi": "avi"}
MOT_FORMAT = "frame,id,left,top,width,height[,score,...]"
DEFAULT_FPS = 25


@dataclass(frozen=True)
class Box:
    frame: int
    track_id: int
    left: float
    top: float
    width: float
    height: float


def read_tracks(path: str | Path) -> dict[int, list[Box]]:
    """The boxes of a MOT text file by frame number."""
    path = Path(path)
    if not path.is_file():
        raise ReidError(f"missing tracks file {path} (expected lines '{MOT_FORMAT}')")
    by_frame: dict[int, list[Box]] = defaultdict(list)
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = [f for f in re.split(r"[,\s]+", line.strip()) if f]
        if not fields or fields[0].startswith("#"):
            continue
        try:
            frame, track, left, top, width, height = (float(f) for f in fields[:6])
        except ValueError:  # a field that is not a number, or fewer than 6
            if number == 1 and any(c.isalpha() for c in line):
                continue  # a header line
            raise ReidError(f"cannot parse line {number} of {path}: {line.strip()!r} "
                            f"(expected '{MOT_FORMAT}')") from None
        if frame < 1 or width <= 0 or height <= 0:
            raise ReidError(f"line {number} of {path} has frame {frame:g}, size {width:g} x "
                            f"{height:g} (expected frames from 1 and positive sizes)")
        by_frame[int(frame)].append(Box(int(frame), int(track), left, top, width, height))
    return dict(by_frame)


def _natural(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def read_frames(source: str | Path) -> tuple[Iterator[Image.Image], Fraction | None]:
    """(RGB frames in order, frame rate or None for a folder) of a video or a frame folder."""
    source = Path(source)
    if source.is_dir():
        files = sorted((p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                       key=_natural)
        if not files:
            raise ReidError(f"no frames in {source} (expected {', '.join(IMAGE_SUFFIXES)} "
                            "images, frame 1 first in natural order)")
        return (Image.open(p).convert("RGB") for p in files), None
    if not source.is_file():
        raise ReidError(f"missing video {source} (expected a video file or a folder of frames)")
    container = _open_video(source)
    stream = container.streams.video[0]

    def frames() -> Iterator[Image.Image]:
        with container:
            for frame in container.decode(stream):
                yield frame.to_image()

    return frames(), stream.average_rate


def _open_video(path: Path, mode: str = "r", **kwargs):
    try:
        import av
    except ImportError as exc:
        raise ReidError(f"reading or writing the video {path} needs PyAV: pip install "
                        "'reid-toolbox[video]' (or use a folder of frames)") from exc
    try:
        return av.open(path if mode == "r" else kwargs.pop("file"), mode, **kwargs)
    except av.error.FFmpegError as exc:
        raise ReidError(f"cannot open the video {path}: {exc}") from exc


class VideoVisualizer:
    """Draws the boxes of one frame: a frame in the identity's colour and an ``id N`` tag."""

    def __init__(self, thickness: int | None = None) -> None:
        self.thickness = thickness

    def draw(self, image: Image.Image, boxes: Iterable[Box]) -> Image.Image:
        image = image.copy()
        draw = ImageDraw.Draw(image)
        thickness = self.thickness or max(2, round(min(image.size) / 150))
        font = ImageFont.load_default(size=max(10, 4 * thickness + 4))
        pad = thickness
        for box in boxes:
            colour = id_color(box.track_id)
            right, bottom = box.left + box.width - 1, box.top + box.height - 1
            draw.rectangle((box.left, box.top, right, bottom), outline=colour, width=thickness)
            label = f"id {box.track_id}"
            _, _, text_width, text_height = font.getbbox(label)
            tag_height = text_height + 2 * pad
            # above the box, or inside its top when there is no room above
            tag_top = box.top - tag_height if box.top >= tag_height else box.top
            draw.rectangle((box.left, tag_top, box.left + text_width + 2 * pad,
                            tag_top + tag_height), fill=colour)
            draw.text((box.left + pad, tag_top + pad), label, fill=text_color(colour), font=font)
        return image


def annotate_video(source: str | Path, tracks: str | Path, output: str | Path,
                   fps: float | None = None, thickness: int | None = None) -> dict:
    """Draw ``tracks`` on the frames of ``source`` into ``output`` (a folder of PNGs or a video
    file, see the module docstring); returns counts and the output path."""
    boxes = read_tracks(tracks)
    frames, source_rate = read_frames(source)
    output = Path(output)
    drawn = _drawn_frames(frames, boxes, VideoVisualizer(thickness))
    if output.suffix.lower() in VIDEO_FORMATS:
        rate = Fraction(fps).limit_denominator(1001) if fps else source_rate or DEFAULT_FPS
        count = _write_video(drawn, output, rate)
    elif output.suffix:
        raise ReidError(f"cannot write {output}: expected a folder (PNG frames) or a video "
                        f"file ({', '.join(VIDEO_FORMATS)})")
    else:
        count = _write_frames(drawn, output)
    unused = sorted(frame for frame in boxes if frame > count)
    if unused:
        raise ReidError(f"{tracks} has boxes for frame {unused[0]} but {source} has only "
                        f"{count} frames (wrote {output})")
    return {"output": str(output), "frames": count,
            "boxes": sum(len(b) for b in boxes.values()),
            "identities": len({b.track_id for bs in boxes.values() for b in bs})}


def _drawn_frames(frames: Iterator[Image.Image], boxes: dict[int, list[Box]],
                  visualizer: VideoVisualizer) -> Iterator[Image.Image]:
    for number, frame in enumerate(frames, start=1):
        yield visualizer.draw(frame, boxes.get(number, ()))


def _write_frames(frames: Iterable[Image.Image], folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for count, frame in enumerate(frames, start=1):
        atomic_write(folder / f"{count:06d}.png", lambda f, im=frame: im.save(f, format="PNG"))
    return count


def _write_video(frames: Iterator[Image.Image], path: Path, rate: Fraction) -> int:
    """Encode ``frames`` (H.264 when this PyAV has it, else MPEG-4 part 2)."""
    import av
    codec = "libx264" if "libx264" in av.codecs_available and path.suffix != ".avi" else "mpeg4"
    count = 0

    def write(file) -> None:
        nonlocal count
        container = _open_video(path, "w", file=file, format=VIDEO_FORMATS[path.suffix.lower()])
        with container:
            stream = None
            for count, frame in enumerate(frames, start=1):
                if stream is None:  # yuv420p needs even sizes: round down
                    stream = container.add_stream(codec, rate=rate)
                    stream.width, stream.height = frame.width // 2 * 2, frame.height // 2 * 2
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": "18"} if codec == "libx264" else {"qscale": "2"}
                frame = frame.crop((0, 0, stream.width, stream.height))
                container.mux(stream.encode(av.VideoFrame.from_image(frame)))
            if stream is None:
                raise ReidError(f"no frames to write to {path}")
            container.mux(stream.encode())

    atomic_write(path, write)
    return count
