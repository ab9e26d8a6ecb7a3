"""The parsers of ``reid visualize`` and ``reid video`` (figures of a trained model's rank
lists; tracked people drawn on a video: the command-line side of ``reid.utils.visualizer``
and ``reid.utils.video_visualizer``), added by ``reid/cli.py``, which keeps
``cmd_visualize`` (it loads the recipe like the other commands: ``reid/commands.py``)."""
from __future__ import annotations

import argparse
from typing import Callable

from reid.errors import ReidError


def cmd_video(args: argparse.Namespace) -> None:
    """Tracked people drawn on a video or a folder of frames, a stable colour per identity."""
    from reid.utils.video_visualizer import annotate_video
    if not (args.input and args.tracks and args.output):
        raise ReidError("reid video needs --input VIDEO|FOLDER, --tracks FILE (MOT lines "
                        "frame,id,left,top,width,height) and --output FOLDER|FILE.mp4")
    out = annotate_video(args.input, args.tracks, args.output, fps=args.fps)
    print(f"wrote {out['frames']} frames with {out['boxes']} boxes of {out['identities']} "
          f"identities to {out['output']}")


def add_visual_commands(sub, command: Callable[..., argparse.ArgumentParser],
                        cmd_visualize: Callable[[argparse.Namespace], None]) -> None:
    """``reid visualize`` (a recipe, weights and overrides, through the CLI's ``command``)
    and ``reid video`` (neither)."""
    p = command("visualize", cmd_visualize, "draw the rank lists of chosen queries of a test "
                "set (by index or file name)", weights=True)
    p.add_argument("--query", action="append", metavar="INDEX|FILE",
                   help="a query to draw: its index in the query set or its file name "
                   "(repeatable)")
    p.add_argument("--dataset", help="test set name (default: the first of DATASETS.TESTS)")
    p.add_argument("--max-rank", type=int, default=10, help="gallery images per query "
                   "(default 10)")
    p.add_argument("--output", help="figure file (default: OUTPUT_DIR/visual/rank_lists.png)")
    p = sub.add_parser("video", help="draw tracked people (MOT-format boxes with track ids) "
                       "on a video or a folder of frames, a stable colour per identity")
    p.add_argument("--input", help="a video file or a folder of frames")
    p.add_argument("--tracks", help="MOT text file: frame,id,left,top,width,height[,...]")
    p.add_argument("--output", help="a folder (PNG frames) or a video file (.mp4, .mkv, "
                   ".mov, .avi)")
    p.add_argument("--fps", type=float, help="frame rate of the output video (default: the "
                   "input video's, 25 for frames)")
    p.set_defaults(fn=cmd_video, command_parser=p, opts=[])
