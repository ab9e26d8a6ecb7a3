"""The video visualizer on a short synthetic video: every identity keeps its colour in every
frame (read back from lossless PNG frames); a folder of frames becomes a video; MOT-file
parsing and its errors; the colormap."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid.errors import ReidError
from reid.utils.colormap import colormap, id_color, random_color, text_color
from reid.utils.video_visualizer import Box, annotate_video, read_tracks

av = pytest.importorskip("av")  # the `video` extra (in `test`): a failure in CI

SIZE = (128, 96)   # width, height
FRAMES = 6
# track id -> (left, top) in frame f: (left + 4 f, top); every box 24 x 40
TRACKS = {3: (8, 30), 7: (70, 34)}
BOX_W, BOX_H = 24, 40


def box_at(track: int, frame: int) -> tuple[int, int]:
    left, top = TRACKS[track]
    return left + 4 * (frame - 1), top


def write_tracks(path: Path, header: bool = True) -> Path:
    lines = ["frame,id,bb_left,bb_top,bb_width,bb_height,conf"] if header else []
    lines += [f"{f},{t},{box_at(t, f)[0]},{box_at(t, f)[1]},{BOX_W},{BOX_H},0.9"
              for f in range(1, FRAMES + 1) for t in TRACKS]
    path.write_text("\n".join(lines) + "\n")
    return path


def background(frame: int) -> Image.Image:
    """A grey frame with two darker 'people' where the tracks are."""
    image = Image.new("RGB", SIZE, (90, 90, 90))
    for track in TRACKS:
        left, top = box_at(track, frame)
        image.paste((40, 30 + 20 * frame, 60), (left + 4, top + 4, left + BOX_W - 4,
                                                top + BOX_H - 4))
    return image


def write_video(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for frame in range(1, FRAMES + 1):
            container.mux(stream.encode(av.VideoFrame.from_image(background(frame))))
        container.mux(stream.encode())
    return path


def edge_colour(image: Image.Image, track: int, frame: int) -> tuple[int, int, int]:
    """The pixel in the middle of the box's left edge (the outline, 2 pixels wide here)."""
    left, top = box_at(track, frame)
    return image.getpixel((left, top + BOX_H // 2))


def test_each_identity_keeps_its_colour_in_every_frame_of_a_video(tmp_path):
    video = write_video(tmp_path / "walk.mp4")
    out = annotate_video(video, write_tracks(tmp_path / "tracks.txt"), tmp_path / "frames")
    assert out == {"output": str(tmp_path / "frames"), "frames": FRAMES,
                   "boxes": FRAMES * len(TRACKS), "identities": 2}
    written = sorted((tmp_path / "frames").glob("*.png"))
    assert [p.name for p in written] == [f"{f:06d}.png" for f in range(1, FRAMES + 1)]
    seen: dict[int, set] = {track: set() for track in TRACKS}
    for frame, path in enumerate(written, start=1):
        with Image.open(path) as image:
            assert image.size == SIZE
            for track in TRACKS:
                seen[track].add(edge_colour(image.convert("RGB"), track, frame))
    assert seen == {3: {id_color(3)}, 7: {id_color(7)}}  # one colour each, all frames
    assert id_color(3) != id_color(7)


def test_a_folder_of_frames_becomes_a_video(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for frame in range(1, FRAMES + 1):  # natural order: 2 before 10
        background(frame).save(frames / f"img{frame}.jpg", quality=95)
    out = annotate_video(frames, write_tracks(tmp_path / "t.csv", header=False),
                         tmp_path / "annotated.mp4", fps=10)
    assert out["frames"] == FRAMES
    with av.open(str(tmp_path / "annotated.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 10
        decoded = [f.to_image() for f in container.decode(stream)]
    assert len(decoded) == FRAMES and decoded[0].size == SIZE
    # lossy, but the outline is still close to the identity's colour
    for frame, image in enumerate(decoded, start=1):
        for track in TRACKS:
            got = np.array(edge_colour(image, track, frame), dtype=int)
            assert np.abs(got - np.array(id_color(track))).max() < 60


def test_read_tracks_groups_boxes_by_frame(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("# MOT16\n1 5 10.5 20 30 40 1 -1 -1 -1\n1,6,0,0,5,5\n\n3,5,1,2,3,4\n")
    assert read_tracks(path) == {1: [Box(1, 5, 10.5, 20, 30, 40), Box(1, 6, 0, 0, 5, 5)],
                                 3: [Box(3, 5, 1, 2, 3, 4)]}


@pytest.mark.parametrize("text, message", [
    ("1,5,10,20\n", r"cannot parse line 1 of .*: '1,5,10,20' \(expected 'frame,id,left"),
    ("1,5,10,20,30,40\n2,x,1,1,1,1\n", "cannot parse line 2"),
    ("0,5,10,20,30,40\n", "has frame 0, size 30 x 40 .expected frames from 1"),
])
def test_read_tracks_errors(tmp_path, text, message):
    (tmp_path / "t.txt").write_text(text)
    with pytest.raises(ReidError, match=message):
        read_tracks(tmp_path / "t.txt")


def test_boxes_past_the_last_frame_and_bad_outputs_are_errors(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    background(1).save(frames / "1.png")
    tracks = write_tracks(tmp_path / "t.csv")
    with pytest.raises(ReidError, match=r"boxes for frame 2 but .*frames has only 1 frames"):
        annotate_video(frames, tracks, tmp_path / "out")
    with pytest.raises(ReidError, match=r"expected a folder \(PNG frames\) or a video file"):
        annotate_video(frames, tracks, tmp_path / "out.gif")
    with pytest.raises(ReidError, match="missing video"):
        annotate_video(tmp_path / "nothing.mp4", tracks, tmp_path / "out")


def test_colormap_is_stable_and_distinct():
    colours = [id_color(i) for i in range(40)]
    assert colours == [id_color(i) for i in range(40)]  # a function of the id alone
    assert min(np.abs(np.subtract(a, b)).sum() for a, b in itertools.combinations(colours, 2)) \
        >= 30
    palette = colormap(rgb=True, maximum=1)
    assert palette.shape == (80, 3) and palette.max() <= 1
    assert np.allclose(palette[5] * 255, id_color(5), atol=1e-4)
    assert np.allclose(colormap()[5], id_color(5)[::-1])  # BGR by default, as FastReID
    picked = random_color(rgb=True)
    assert any(np.allclose(picked, row) for row in colormap(rgb=True))
    assert text_color((250, 250, 0)) == (0, 0, 0) and text_color((20, 20, 120)) == (255,) * 3


def test_reid_video_command(tmp_path, capsys):
    from reid.cli import main
    video = write_video(tmp_path / "walk.mp4")
    tracks = write_tracks(tmp_path / "tracks.txt")
    assert main(["video", "--input", str(video), "--tracks", str(tracks),
                 "--output", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == (f"wrote {FRAMES} frames with {2 * FRAMES} boxes "
                                               f"of 2 identities to {tmp_path / 'out'}")
    assert main(["video", "--input", str(video)]) == 2
    assert "reid video needs --input VIDEO|FOLDER, --tracks FILE" in capsys.readouterr().err
