"""`robot-rl`: one entry point, thin subcommands over library code.

User mistakes (a missing path, an unknown config value, a schema mismatch, a missing extra) end
with one line on stderr and exit code 2; a traceback means a bug in robot_rl.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from robot_rl.config import CONF_DIR, compose
from robot_rl.errors import ConfigError, RobotRLError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise ConfigError(f"{self.prog}: {message}")


def _print_summary(info: dict) -> None:
    print(f"store      {info['path']}")
    print(f"episodes   {info['episodes']}    steps {info['steps']}    fps {info.get('fps', '?')}")
    length = info["episode_length"]
    print(f"length     min {length['min']}  mean {length['mean']:.1f}  max {length['max']}")
    print(f"on disk    {info['size_bytes'] / 2**20:.2f} MiB")
    for key in ("robot", "task", "source", "created"):
        if key in info:
            print(f"{key:<10} {info[key]}")
    print("keys")
    for key, spec in info["keys"].items():
        codec = spec.get("codec")
        if isinstance(codec, dict):  # Blosc settings other than the default
            codec = f"{codec['cname']} {codec['clevel']} {codec['shuffle']}"
        codec = f"  ({codec})" if codec else ""
        print(f"  {key:<22} {str(tuple(spec['shape'])):<14} {spec['dtype']}{codec}")


def cmd_collect(args, cfg) -> None:
    from robot_rl.commands.collect import collect

    result = collect(cfg)
    clock = result["report"]["clock"]
    print(
        f"recorded {result['episodes']} episodes ({result['successes']} successful) into {result['store']}; "
        f"loop {clock.get('achieved_hz', 0):.1f} Hz, {clock.get('overruns', 0)} overruns",
        file=sys.stderr,
    )


def cmd_demo(args, cfg) -> None:
    from robot_rl.experiments.resip_demo import resip_seeds

    _print_experiment(resip_seeds(cfg))


def cmd_vlm_iql(args, cfg) -> None:
    from robot_rl.experiments.vlm_iql import vlm_iql

    _print_experiment(vlm_iql(cfg))


def cmd_idm_iql(args, cfg) -> None:
    from robot_rl.experiments.idm_iql import idm_iql

    _print_experiment(idm_iql(cfg))


def cmd_vptr(args, cfg) -> None:
    from robot_rl.experiments.vptr import vptr

    _print_experiment(vptr(cfg))


def _print_experiment(result) -> None:
    """An experiment's table.md (one row per seed, then mean ± std), then its files, one path a
    line: results.json, table.md, and last the experiment's own report (report.json for `demo`)."""
    print(result.table.read_text(), end="")
    print()
    for path in result.files.values():
        print(path)


def cmd_train(args, cfg) -> None:
    from robot_rl.commands.train import train

    result = train(cfg)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2, default=str))


def cmd_eval(args, cfg) -> None:
    from robot_rl.commands.train import evaluate_checkpoint

    result = evaluate_checkpoint(
        cfg.checkpoint,
        cfg.env,
        int(cfg.episodes),
        int(cfg.num_envs),
        int(cfg.seed),
        cfg.ddim_steps,
        dist={k: cfg.get(k) for k in ("dist", "workers", "ray_address")},
        video=int(cfg.video),
        video_dir=_eval_video_dir(cfg),
    )
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def cmd_dataset_info(args) -> None:
    from robot_rl.datasets import EpisodeStore

    with EpisodeStore.open(args.path) as store:
        info = store.info()
    info.pop("config", None) if not args.json else None
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_summary(info)


def cmd_dataset_verify(args) -> int:
    from robot_rl.datasets.integrity import verify_store

    problems, checksums = verify_store(args.path)
    for line in problems:
        print(f"damaged: {line}")
    if problems:
        print(
            f"{args.path}: {len(problems)} damaged parts; robot-rl dataset repair copies the intact episodes"
        )
    elif checksums:
        print(f"{args.path}: whole (every chunk of every key read and its CRC-32C checked)")
    else:
        print(
            f"{args.path}: every chunk decodes; this store predates checksums, so changed bytes that "
            "still decode cannot be seen"
        )
    return 1 if problems else 0


def cmd_dataset_repair(args) -> None:
    from robot_rl.datasets.integrity import repair_store

    result = repair_store(args.src, args.out)
    dropped = ", ".join(map(str, result["dropped"])) or "none"
    print(f"kept {result['kept']} of {result['episodes']} episodes in {result['store']} (dropped: {dropped})")


def cmd_dataset_show(args) -> None:
    from robot_rl.datasets.show import show_episode

    for path in show_episode(args.path, args.episode, args.out, args.format):
        print(path)


def cmd_label_vlm(args, cfg) -> None:
    from robot_rl.commands.label import label_vlm

    result = label_vlm(cfg)
    report = result["report"]
    print(
        json.dumps({"labels_file": result.get("out"), "labels": report["labels"], "report": report}, indent=2)
    )


def cmd_dataset_relabel(args) -> None:
    from robot_rl.learners.reward_model import relabel_store

    print(json.dumps(relabel_store(args.path, args.model, args.key), indent=2, default=str))


def cmd_dataset_label_actions(args) -> None:
    from robot_rl.learners.inverse_dynamics import label_actions

    print(json.dumps(label_actions(args.path, args.model, args.key), indent=2))


def cmd_dataset_split_actions(args) -> None:
    from robot_rl.datasets.split import split_action_free

    print(
        json.dumps(
            split_action_free(
                args.path,
                args.labeled,
                args.unlabeled,
                args.fraction,
                args.lowest,
                args.reward_key,
                args.seed,
            ),
            indent=2,
        )
    )


def cmd_dataset_import_video(args) -> None:
    from robot_rl.datasets.video import import_video

    cut = None if args.no_cuts else args.cut_threshold
    print(
        json.dumps(
            import_video(
                args.src,
                args.out,
                args.size,
                args.fps or None,
                args.camera,
                cut,
                args.frames_fps,
                task=args.task,
            ),
            indent=2,
        )
    )


def _key_map(pairs: list[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise ConfigError(f"--key takes OURS=THEIRS, got {bad[0]!r}")
    return dict(p.split("=", 1) for p in pairs)


def cmd_dataset_import(args) -> None:
    from robot_rl.datasets.formats import import_dataset

    if args.fps is not None and not args.fps > 0:
        raise ConfigError(f"--fps must be positive, got {args.fps}")
    result = import_dataset(
        args.src, args.out, args.format, _key_map(args.key), fps=args.fps, camera_codec=args.camera_codec
    )
    print(json.dumps(result, indent=2))


def cmd_dataset_export(args) -> None:
    from robot_rl.datasets.formats import export_dataset

    print(json.dumps(export_dataset(args.store, args.out, args.format, _key_map(args.key)), indent=2))


def cmd_dataset_import_rosbag(args) -> None:
    from omegaconf import OmegaConf

    from robot_rl.ros.bag_import import RosbagImportConfig, import_rosbag

    if not Path(args.config).exists():
        raise ConfigError(f"no import config at {args.config}")
    values = OmegaConf.to_container(OmegaConf.load(args.config), resolve=True)
    try:
        cfg = RosbagImportConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"bad import config {args.config}: {exc}") from None
    print(json.dumps(import_rosbag(args.bag, args.out, cfg), indent=2))


def cmd_bench(args) -> None:
    import importlib

    bench = importlib.import_module(f"robot_rl.commands.bench.{args.which}")
    format_table, run = bench.format_table, bench.run
    if args.load and args.which != "loop":
        raise ConfigError("--load applies to `robot-rl bench loop` only")
    if args.load < 0:
        raise ConfigError(f"--load must be 0 or more processes, got {args.load}")
    results = run(quick=args.quick, load=args.load) if args.which == "loop" else run(quick=args.quick)
    print(format_table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)


def cmd_plot(args) -> None:
    from robot_rl.utils.training import plot_runs

    if args.smooth < 1:
        raise ConfigError(f"--smooth must be at least 1, got {args.smooth}")
    curves = [c for c in args.curves.split(",") if c]
    print(plot_runs(args.runs, curves, args.out, args.smooth))


def cmd_find_cameras(args) -> None:
    """RealSense devices (serials and modes, through librealsense) and V4L2 video devices."""
    import glob

    from robot_rl.hardware.realsense_camera import find_realsense

    try:
        found = find_realsense()
    except ConfigError as exc:  # pyrealsense2 unusable: still list the V4L2 cameras
        print(f"RealSense: {exc}", file=sys.stderr)
        found = []
    for path in sorted(glob.glob("/dev/video*")):
        name = Path(f"/sys/class/video4linux/{Path(path).name}/name")
        found.append(
            {"kind": "opencv", "source": path, "name": name.read_text().strip() if name.exists() else ""}
        )
    if args.json:
        print(json.dumps(found, indent=2))
        return
    if not found:
        print(
            "no cameras found (RealSense: is libusb installed and the udev rule in place? "
            "V4L2: no /dev/video*)"
        )
    for cam in found:
        if cam["kind"] == "realsense":
            print(
                f"realsense  serial {cam['serial']}  {cam['name']}  "
                f"firmware {cam['firmware']}  usb {cam['usb']}"
            )
            for mode in cam["modes"]:
                print(f"    {mode}")
        else:
            print(f"opencv     {cam['source']}  {cam['name']}")


def cmd_read_robot(args, cfg) -> None:
    """Connect read-only (torque stays off), print the robot's state once: for calibration."""
    import numpy as np

    from robot_rl.factory import make_robot

    if not cfg.get("robot"):
        raise ConfigError("read-robot needs robot=<name> (a config in robot_rl/conf/robot/)")
    robot = (
        make_robot(cfg.robot, dry_run=True) if cfg.robot.kind == "dynamixel_arm" else make_robot(cfg.robot)
    )
    with robot:
        obs = robot.observe()
        for key, value in obs.items():
            print(f"{key:<10} {np.array2string(np.asarray(value), precision=4)}")
        if hasattr(robot, "servo_angles"):
            print(
                "servo angles (rad), for the offsets: "
                + ", ".join(f"id {i}: {a:.4f}" for i, a in robot.servo_angles().items())
            )


def sweep_overrides(overrides: list[str]) -> list[str]:
    """The arguments naming a sweep setting (grid, seeds, metric...): they configure the sweep; all
    others are every trial's `robot-rl train` overrides."""
    from omegaconf import OmegaConf

    keys = set(OmegaConf.load(CONF_DIR / "sweep.yaml"))
    return [a for a in overrides if a.split("=")[0].lstrip("+~").split(".")[0] in keys]


def trial_overrides(overrides: list[str]) -> list[str]:
    """The arguments of a sweep that are every trial's `robot-rl train` overrides."""
    mine = sweep_overrides(overrides)
    return [a for a in overrides if a not in mine]


def _check_sweep(args, cfg) -> None:
    from robot_rl.commands.sweep import check_sweep

    check_sweep(cfg, trial_overrides(args.overrides))


def cmd_sweep(args, cfg) -> None:
    from robot_rl.commands.sweep import sweep

    out = sweep(cfg, trial_overrides(args.overrides))
    print((out / "table.md").read_text(), end="")
    print(f"results: {out / 'results.json'}, plot: {out / 'sweep.png'}", file=sys.stderr)


def cmd_ros(args) -> None:
    if args.node == "launch-dir":  # `ros2 launch $(robot-rl ros launch-dir)/arm_collect.launch.xml ...`
        from robot_rl.ros import LAUNCH_DIR

        print(LAUNCH_DIR)
        return
    from robot_rl.commands.ros_nodes import main as run_ros_node

    print(json.dumps(run_ros_node(args.node, args.ros_args), indent=2, default=str))


def _train_epilog() -> str:
    """The learners and envs `robot-rl train --help` lists (from the config folders: no imports)."""
    learners = " ".join(sorted(p.stem for p in (CONF_DIR / "learner").glob("*.yaml")))
    envs = " ".join(sorted(p.stem for p in (CONF_DIR / "env").glob("*.yaml")))
    return (
        f"learners (learner=NAME): {learners}\nenvs (env=NAME): {envs}\n"
        "robot-rl train learner=NAME --help lists that learner's keys with their defaults."
    )


def learner_help(name: str) -> str:
    """`robot-rl train learner=NAME --help`: each key of the learner's config (learner.KEY=...), its
    default as the learner's config file sets it, and the line that documents it in its dataclass."""
    from omegaconf import OmegaConf

    from robot_rl.config import learner_config_class

    cfg = compose("train", [f"learner={name}"]).learner
    notes = field_notes(learner_config_class(name))
    lines = [f"learner={name}: the keys of learner.KEY=VALUE, with their defaults"]
    for key, value in OmegaConf.to_container(cfg, resolve=True).items():
        shown = json.dumps(value) if not isinstance(value, str) else value
        lines.append(f"  {key} = {shown}" + (f"    # {notes[key]}" if notes.get(key) else ""))
    return "\n".join(lines)


def field_notes(cls) -> dict[str, str]:
    """A dataclass's fields' trailing comments in its source: `steps: int = 10  # the note`."""
    import inspect
    import re

    notes = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if match:
            notes[match[1]] = match[2].strip()
    return notes


def _eval_video_dir(cfg) -> Path:
    """eval's videos: `video_dir`, or a folder named after `out` (result.json: result_videos/), or
    runs/eval/videos_<time>: two evaluations never share one."""
    if cfg.video_dir:
        return Path(cfg.video_dir)
    if cfg.out:
        return Path(cfg.out).with_name(f"{Path(cfg.out).stem}_videos")
    return Path("runs/eval") / time.strftime("videos_%Y%m%d-%H%M%S")


def _run_folder(cfg) -> str:
    from robot_rl.commands.train import run_folder

    return run_folder(cfg)


def _labels_path(cfg) -> Path:
    from robot_rl.commands.label import labels_path

    return labels_path(cfg)


# Where each command's run record goes (robot_rl.utils.run_record): (its target, a folder?) from
# the composed config; None, or a command not here: it writes nothing to record.
RECORDS = {
    "collect": lambda cfg: (cfg.out, False),
    "demo": lambda cfg: (cfg.run_dir, True),
    "vlm-iql": lambda cfg: (cfg.run_dir, True),
    "idm-iql": lambda cfg: (cfg.run_dir, True),
    "vptr": lambda cfg: (cfg.run_dir, True),
    "train": lambda cfg: (_run_folder(cfg), True),
    "sweep": lambda cfg: (cfg.out, True),
    "eval": lambda cfg: (
        (cfg.out, False) if cfg.out else ((_eval_video_dir(cfg), True) if cfg.video else None)
    ),
    "vlm": lambda cfg: (_labels_path(cfg), False),
}


def overrides_command(sub, name: str, help: str, func, config: str, overrides=None, check=None, **parser):
    """A subcommand whose arguments are config overrides (key=value) of the config `config`:
    `func(args, cfg)` runs with it composed, inside its run record; `--cfg` prints it instead.
    `overrides` picks the arguments that are the config's (default: all); `check(args, cfg)`
    rejects bad arguments before anything is written."""
    p = sub.add_parser(name, help=help, **parser)
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    p.set_defaults(func=lambda args: _configured(args, func, name, config, overrides, check))
    return p


def _configured(args, func, name: str, config: str, overrides, check) -> None:
    from omegaconf import OmegaConf

    from robot_rl.utils.run_record import RunRecord

    cfg = compose(config, overrides(args.overrides) if overrides else args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg), end="")
        return
    if check is not None:
        check(args, cfg)
    where = RECORDS[name](cfg) if name in RECORDS else None
    if where is None:
        func(args, cfg)
        return
    with RunRecord(where[0], cfg, folder=where[1], argv=getattr(args, "argv", None)):
        func(args, cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="robot-rl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    overrides_command(
        sub,
        "collect",
        "run the control loop with a teleop device and record episodes (episodes=20 env=reach out=...)",
        cmd_collect,
        "collect",
    )

    overrides_command(
        sub,
        "demo",
        "what `make demo` runs: demos -> diffusion BC -> residual PPO on peg_insert",
        cmd_demo,
        "demo",
    )

    overrides_command(
        sub,
        "vlm-iql",
        "offline RL from VLM feedback end to end: labels -> reward model -> IQL, per seed",
        cmd_vlm_iql,
        "vlm_iql",
    )

    overrides_command(
        sub,
        "idm-iql",
        "action-free episodes: 10%% keep actions, an IDM labels the rest, IQL on the union, per seed",
        cmd_idm_iql,
        "idm_iql",
    )
    overrides_command(
        sub,
        "vptr",
        "V-PTR: ICVF on action-free video -> IQL with that image encoder vs from scratch, per seed",
        cmd_vptr,
        "vptr",
    )

    overrides_command(
        sub,
        "train",
        "train a learner: learner=diffusion_bc dataset=PATH | learner=residual_ppo base=PATH",
        cmd_train,
        "train",
        epilog=_train_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    overrides_command(
        sub,
        "sweep",
        "grid or random search over train overrides and seeds on Ray: table (mean ± std) and plot",
        cmd_sweep,
        "sweep",
        overrides=sweep_overrides,
        check=_check_sweep,
    )

    overrides_command(
        sub, "eval", "success rate of a checkpoint: checkpoint=PATH env=<task> episodes=100", cmd_eval, "eval"
    )

    p = sub.add_parser("dataset", help="inspect, relabel and split episode stores")
    dsub = p.add_subparsers(dest="dataset_command", required=True, parser_class=_Parser)
    q = dsub.add_parser("info", help="episodes, steps, keys, shapes, dtypes, fps, size on disk")
    q.add_argument("path")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_dataset_info)
    q = dsub.add_parser("show", help="write a video of the cameras and a plot of state and action")
    q.add_argument("path")
    q.add_argument("--episode", type=int, default=0)
    q.add_argument("--out", default=".", help="output folder (default: current folder)")
    q.add_argument("--format", default="mp4", choices=("mp4", "gif"))
    q.set_defaults(func=cmd_dataset_show)
    q = dsub.add_parser(
        "verify", help="read every chunk: list what is damaged (exit 1), or say the store is whole"
    )
    q.add_argument("path")
    q.set_defaults(func=cmd_dataset_verify)
    q = dsub.add_parser("repair", help="copy the intact episodes of a damaged store into a new store")
    q.add_argument("src")
    q.add_argument("out", help="the new store (.zarr); the damaged one is never changed")
    q.set_defaults(func=cmd_dataset_repair)
    q = dsub.add_parser(
        "relabel", help="write a preference reward model's reward into the store as a new key"
    )
    q.add_argument("path")
    q.add_argument("--model", required=True, help="a reward_model checkpoint folder")
    q.add_argument("--key", default="reward_vlm", help="the new reward key (default: reward_vlm)")
    q.set_defaults(func=cmd_dataset_relabel)

    q = dsub.add_parser("import-video", help="video files or folders of frames -> an observation-only store")
    q.add_argument("src", help="a video file, a folder of videos, or a folder of frames (or of such folders)")
    q.add_argument("out", help="the new store (.zarr)")
    q.add_argument("--size", type=int, default=84, help="square frame size in pixels (default 84)")
    q.add_argument(
        "--fps", type=float, default=10.0, help="subsample to this frame rate (default 10; 0: keep all)"
    )
    q.add_argument(
        "--frames-fps", type=float, default=30.0, help="frame rate of folders of frames (default 30)"
    )
    q.add_argument("--camera", default="front", help="stored as obs/image/<camera> (default front)")
    q.add_argument(
        "--cut-threshold", type=float, default=0.5, help="histogram change that starts a new episode"
    )
    q.add_argument("--no-cuts", action="store_true", help="one episode per file, no cut detection")
    q.add_argument("--task", help="task text stored with the data")
    q.set_defaults(func=cmd_dataset_import_video)
    q = dsub.add_parser(
        "import-rosbag",
        help="a rosbag2 recording (mcap or sqlite3) -> a store, topics aligned at a fixed fps",
    )
    q.add_argument("bag", help="the rosbag2 folder (mcap or sqlite3, with its metadata.yaml)")
    q.add_argument("out", help="the new store (.zarr)")
    q.add_argument(
        "--config",
        required=True,
        help="YAML: fps, clock, align, tolerance_s, episodes, streams (docs/data.md)",
    )
    q.set_defaults(func=cmd_dataset_import_rosbag)
    from robot_rl.datasets.formats import FORMATS

    formats = "lerobot: LeRobotDataset v3.0, robomimic: HDF5, diffusion_policy: its zarr ReplayBuffer"
    for direction, source, preposition, what in (
        ("import", "src", "--from", "another project's dataset -> a new store"),
        ("export", "store", "--to", "a store -> another project's dataset"),
    ):
        q = dsub.add_parser(direction, help=f"{what} ({formats})")
        q.add_argument(source)
        q.add_argument("out")
        q.add_argument(preposition, dest="format", required=True, choices=FORMATS)
        q.add_argument(
            "--key",
            action="append",
            default=[],
            metavar="OURS=THEIRS",
            help="map a store key to the format's name for it (defaults: robot_rl/conf/formats/)",
        )
        if direction == "import":
            q.add_argument("--fps", type=float, help="the data's rate where the dataset does not hold it")
            q.add_argument(
                "--camera-codec",
                choices=("video", "blosc"),
                help="how the store keeps the cameras (default: video from LeRobot, blosc from the others)",
            )
        q.set_defaults(func=cmd_dataset_import if direction == "import" else cmd_dataset_export)
    q = dsub.add_parser(
        "label-actions", help="write an inverse-dynamics model's actions into an action-free store"
    )
    q.add_argument("path")
    q.add_argument("--model", required=True, help="an idm checkpoint folder (robot-rl train learner=idm)")
    q.add_argument("--key", default="action", help="the new action key (default: action)")
    q.set_defaults(func=cmd_dataset_label_actions)
    q = dsub.add_parser(
        "split-actions", help="SS-ORL's split: a few low-return episodes keep actions, the rest lose them"
    )
    q.add_argument("path")
    q.add_argument("--labeled", required=True, help="output store of the episodes that keep their actions")
    q.add_argument("--unlabeled", required=True, help="output store of the others, without actions")
    q.add_argument("--fraction", type=float, default=0.1, help="share of all episodes labeled (default 0.1)")
    q.add_argument(
        "--lowest", type=float, default=0.5, help="drawn from this lowest-return share (default 0.5)"
    )
    q.add_argument("--reward-key", default="reward")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_dataset_split_actions)

    p = sub.add_parser("label", help="label data: vlm (preference pairs from a vision-language model)")
    lsub = p.add_subparsers(dest="label_command", required=True, parser_class=_Parser)
    overrides_command(
        lsub,
        "vlm",
        "preference labels for frame pairs: store=PATH backend.base_url=URL backend.model=NAME",
        cmd_label_vlm,
        "label",
    )

    p = sub.add_parser("find-cameras", help="list RealSense devices (serials, modes) and V4L2 cameras")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_find_cameras)

    overrides_command(
        sub,
        "read-robot",
        "print a real robot's state once, read only (calibration): robot=<name>",
        cmd_read_robot,
        "collect",
    )

    p = sub.add_parser(
        "ros",
        help="a ROS 2 node (needs rclpy): policy | collect | actor [--ros-args ...]; "
        "launch-dir prints where the launch files are",
    )
    p.add_argument("node", choices=("policy", "collect", "actor", "launch-dir"))
    p.add_argument(
        "ros_args", nargs=argparse.REMAINDER, help="ROS arguments, e.g. --ros-args -p checkpoint:=PATH"
    )
    p.set_defaults(func=cmd_ros)

    p = sub.add_parser("plot", help="learning curves of runs side by side (finished, running or killed)")
    p.add_argument("runs", nargs="+", help="run folders (each with its tensorboard/ events)")
    p.add_argument("--curves", required=True, help="logged values, comma-separated, e.g. eval_success_rate,q")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--smooth", type=int, default=1, help="running mean over this many logged values")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("bench", help="performance benchmarks (table; --json FILE writes the figures)")
    p.add_argument(
        "which", choices=("loop", "store", "sim", "policy", "sac", "iql", "icvf", "scale", "gpu", "resip")
    )
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (for smoke tests)")
    p.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="N",
        help="loop only: also measure beside N busy processes (CPU load), after the idle runs",
    )
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
        try:  # `kill -USR1 PID` prints where every thread is: for a run that seems stuck
            faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
        except (AttributeError, ValueError, OSError):  # no real stderr (an embedding host): no dump
            pass
    try:
        argv = sys.argv[1:] if argv is None else argv
        asked = [a.split("=", 1)[1] for a in argv if a.startswith("learner=")]
        if argv[:1] == ["train"] and asked and {"-h", "--help"} & set(argv):
            print(learner_help(asked[-1]))
            return 0
        args = build_parser().parse_args(argv)
        args.argv = list(argv)  # for the run record (main is also called in-process, with its own)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return code if isinstance(code, int) else 0
    except RobotRLError as exc:
        print(f"robot-rl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robot-rl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        from robot_rl.utils.run_record import stdout_closed

        if not stdout_closed():  # a robot's, ROS's or Ray's connection: an error like any other
            raise
        # The reader went away (`robot-rl dataset info X | head`): nothing left to say.
        os.dup2(
            os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno()
        )  # so the exit's flush cannot fail again
        return 141


if __name__ == "__main__":
    sys.exit(main())
