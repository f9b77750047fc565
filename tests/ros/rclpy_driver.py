"""A robot driver process for the DDS tests: one rclpy node that plays an arm or a car
(ros_sims, at 100 Hz) and, optionally, a camera and a /clock, as a robot's drivers, a simulator
or a bag would. Every command it receives, every command timeout it trips and every status
message of robot_rl's node goes to stdout as one JSON line, flushed: `{"t": host monotonic
time, "kind": ..., "value": ...}`; the first line is `{"kind": "ready"}`. Lines on stdin stage
faults: `pause` / `resume` the state messages, `corrupt` makes them NaN.

    python rclpy_driver.py arm|car [--namespace NS] [--car-command twist] [--camera image|compressed]
                                   [--clock-rate 0.5] [--command-timeout 0.3]

--clock-rate R publishes /clock at 200 Hz, advancing R seconds of simulation time per second;
the driver then stamps its own messages in simulation time (its node has use_sim_time).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from ros_sims import ArmSim, CarSim

from robot_rl.ros import messages as m
from robot_rl.ros.rclpy_io import RclpyIO

_lock = threading.Lock()


def emit(kind: str, value=None) -> None:
    with _lock:
        sys.stdout.write(json.dumps({"t": time.monotonic(), "kind": kind, "value": value}) + "\n")
        sys.stdout.flush()


def publish_clock(node, rate: float, stop: threading.Event) -> None:
    from rosgraph_msgs.msg import Clock

    publisher = node.create_publisher(Clock, "/clock", 10)
    start, sim = time.monotonic(), 1000.0  # simulation time starts far from wall time
    while not stop.wait(0.005):
        t = sim + rate * (time.monotonic() - start)
        sec, nanosec = divmod(int(t * 1e9), 1_000_000_000)
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = sec, nanosec
        publisher.publish(msg)


def publish_camera(io, kind: str, stop: threading.Event) -> None:
    make = m.make_image if kind == "image" else m.make_compressed_image
    publish = io.publisher(
        "camera/image_raw" + ("/compressed" if kind == "compressed" else ""),
        "sensor_msgs/msg/Image" if kind == "image" else "sensor_msgs/msg/CompressedImage",
        "sensor",
    )
    rng, frame = np.random.default_rng(0), 0
    while not stop.wait(1 / 30):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        pixels[0, 0] = frame % 256  # a frame counter in the first pixel
        publish(make(io.types, io.now(), pixels))
        frame += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("robot", choices=("arm", "car"))
    parser.add_argument("--namespace", default="/")
    parser.add_argument("--car-command", default="twist")
    parser.add_argument("--camera", choices=("image", "compressed"))
    parser.add_argument("--clock-rate", type=float)
    parser.add_argument("--command-timeout", type=float, default=0.3)
    args = parser.parse_args()

    # rclpy's own handlers would catch SIGTERM and leave this process running: Python's stay
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    # and SIGINT stops it even when started with SIGINT ignored, as a background job of a
    # non-interactive shell is (`make test &`): the ignore is inherited through exec
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sim_time = args.clock_rate is not None
    node = rclpy.create_node(
        "robot_driver",
        namespace=args.namespace,
        parameter_overrides=[Parameter("use_sim_time", Parameter.Type.BOOL, sim_time)],
    )
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    io = RclpyIO(node)
    stop = threading.Event()
    if sim_time:
        threading.Thread(target=publish_clock, args=(node, args.clock_rate, stop), daemon=True).start()
        while io.now() < 1000.0:  # the node's clock has seen /clock
            time.sleep(0.01)

    # robot_rl's own status topics (robot_rl.ros.node_status), as a rosbag or Foxglove would see them
    def status(kind):
        def on_message(msg):
            s = msg.status[0]
            emit(kind, {"name": s.name, "level": s.level[0], **{kv.key: kv.value for kv in s.values}})

        return on_message

    io.subscribe("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", status("diagnostics"), "reliable")
    for name in ("robot_rl_policy", "robot_rl_collect", "robot_rl_actor"):
        io.subscribe(f"{name}/status", "diagnostic_msgs/msg/DiagnosticArray", status("status"), "reliable")
        io.subscribe(
            f"{name}/action",
            "sensor_msgs/msg/JointState",
            lambda msg: emit("action", {"names": list(msg.name), "position": list(msg.position)}),
            "reliable",
        )
    if args.robot == "arm":
        sim = ArmSim(io, command_timeout_s=args.command_timeout, on_event=emit)
    else:
        sim = CarSim(io, command=args.car_command, command_timeout_s=args.command_timeout, on_event=emit)
    if args.camera:
        threading.Thread(target=publish_camera, args=(io, args.camera, stop), daemon=True).start()
    with sim:
        emit("ready")
        try:
            for line in sys.stdin:  # the test's faults: pause | resume (publishing), corrupt (NaN states)
                {"pause": sim.paused.set, "resume": sim.paused.clear, "corrupt": sim.corrupt}[line.strip()]()
            while True:
                time.sleep(1.0)
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            stop.set()
    executor.shutdown()
    spinner.join(5.0)  # a spinning thread left at exit aborts the process
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
