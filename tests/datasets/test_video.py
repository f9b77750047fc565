"""import-video: real mp4 files written by OpenCV, a corrupt file, a folder of frames, frame-rate
subsampling, square resizing and cut detection."""

import json

import cv2
import numpy as np
import pytest

from robot_rl.cli import main
from robot_rl.datasets import EpisodeStore
from robot_rl.datasets.video import import_video


def write_video(path, frames_bgr, fps=30):
    h, w = frames_bgr[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for f in frames_bgr:
        writer.write(f)
    writer.release()


def moving_square(n, colour=(0, 0, 255), background=40, h=48, w=64):
    frames = []
    for i in range(n):
        f = np.full((h, w, 3), background, np.uint8)
        f[10:26, 5 + i : 21 + i] = colour
        frames.append(f)
    return frames


def test_videos_a_corrupt_file_and_a_folder_of_frames(tmp_path, capsys):
    src = tmp_path / "videos"
    src.mkdir()
    write_video(src / "a.mp4", moving_square(30), fps=30)
    (src / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    frames = src / "take2"
    frames.mkdir()
    for i, f in enumerate(moving_square(12, colour=(0, 255, 0))):
        cv2.imwrite(str(frames / f"{i:04d}.png"), f)
    out = tmp_path / "video.zarr"
    assert (
        main(
            [
                "dataset",
                "import-video",
                str(src),
                str(out),
                "--size",
                "32",
                "--fps",
                "10",
                "--frames-fps",
                "30",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["sources"] == 3 and report["episodes"] == 2
    assert [s["source"] for s in report["skipped"]] == [str(src / "broken.mp4")]
    with EpisodeStore.open(out) as store:
        assert store.keys == ["obs/image/front"] and store.fps == 10
        assert store.episode_lengths.tolist() == [10, 4]  # 30 frames at 30 fps -> 10 at 10 fps; 12 -> 4
        first = store.episode(0)["obs/image/front"]
        assert first.shape == (10, 32, 32, 3) and first.dtype == np.uint8
        # RGB: the red square (BGR 0, 0, 255) is red here.
        assert first[0, :, :, 0].max() > 200 and first[0, :, :, 2].max() < 60


def test_cuts_split_a_video_and_a_missing_source_is_one_line(tmp_path, capsys):
    clip = moving_square(15, background=30) + moving_square(15, colour=(255, 255, 255), background=200)
    write_video(tmp_path / "cut.mp4", clip)
    result = import_video(tmp_path / "cut.mp4", tmp_path / "cut.zarr", size=24, fps=None, progress=False)
    assert result["episodes"] == 2 and result["frames"] == 30
    with EpisodeStore.open(tmp_path / "cut.zarr") as store:
        assert store.fps == pytest.approx(30)  # every frame kept: the video's own rate
    whole = import_video(
        tmp_path / "cut.mp4", tmp_path / "whole.zarr", size=24, fps=None, cut_threshold=None, progress=False
    )
    assert whole["episodes"] == 1
    assert main(["dataset", "import-video", str(tmp_path / "nothing"), str(tmp_path / "x.zarr")]) == 2
    assert "no video or folder" in capsys.readouterr().err
    with pytest.raises(Exception, match="already exists"):
        import_video(tmp_path / "cut.mp4", tmp_path / "cut.zarr", progress=False)


@pytest.mark.parametrize("content", [b"just text, named like a video\n", "truncated"])
def test_nothing_importable_is_exit_2_and_leaves_nothing(tmp_path, capsys, content):
    """A text file named .mp4 or a truncated mp4 used to exit 0 with an empty store left behind,
    which then blocked a re-import."""
    if content == "truncated":
        write_video(tmp_path / "clip.mp4", moving_square(30), fps=30)
        data = (tmp_path / "clip.mp4").read_bytes()
        (tmp_path / "clip.mp4").write_bytes(data[: len(data) // 5])
    else:
        (tmp_path / "clip.mp4").write_bytes(content)
    out = tmp_path / "video.zarr"
    assert main(["dataset", "import-video", str(tmp_path / "clip.mp4"), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "nothing imported" in err[-1] and "clip.mp4" in err[-1]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".video.zarr")]
    write_video(
        tmp_path / "clip.mp4", moving_square(30), fps=30
    )  # the fixed file imports where the failed one did not
    assert main(["dataset", "import-video", str(tmp_path / "clip.mp4"), str(out)]) == 0
