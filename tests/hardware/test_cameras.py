"""Cameras on their real code paths: OpenCV on a video file written here; RealSense through
librealsense itself, fed by a librealsense software device (no camera is attached here)."""

import importlib.util
import time

import numpy as np
import pytest

from robot_rl.core import ControlLoop
from robot_rl.errors import ConfigError, DeviceError, StaleFrameError
from robot_rl.hardware.camera_reader import DeviceClock
from robot_rl.hardware.opencv_camera import OpenCVCamera, OpenCVCameraConfig


def write_video(path, frames=30, size=(64, 48), fps=30):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(frames):
        image = np.zeros((size[1], size[0], 3), np.uint8)
        image[:, :, 2] = 200  # red in BGR
        image[:4, : 2 * i + 2, 1] = 255
        writer.write(image)
    writer.release()


def test_opencv_camera_reads_a_file_as_a_live_camera(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path)
    cam = OpenCVCamera(OpenCVCameraConfig("front", str(path)))
    assert cam.shape == (48, 64, 3)
    cam.connect()
    try:
        first = cam.read()
        assert first.image[20, 20, 0] > 150 and first.image[20, 20, 2] < 60  # RGB, not BGR
        time.sleep(0.3)
        later = cam.read()  # read() never blocks and returns the newest frame
        assert later.timestamp > first.timestamp and time.monotonic() - later.timestamp < 0.1
        assert 5 <= cam.frames <= 16  # paced at the file's 30 fps, not as fast as it decodes
        time.sleep(1.0)
        assert cam.frames > 30  # and it starts over at the end
    finally:
        cam.disconnect()
    with pytest.raises(ConfigError, match="gives 64x48 instead of 640x480"):
        OpenCVCamera(OpenCVCameraConfig("front", str(path), width=640, height=480))._open()
    with pytest.raises(ConfigError, match="no such device"):
        OpenCVCamera(OpenCVCameraConfig("front", "/nope/cam.avi"))


def test_device_clock_maps_device_time_to_the_host_clock():
    clock = DeviceClock(window=50)
    rng = np.random.default_rng(0)
    host0, dev0 = 5000.0, 12.0
    errors = []
    for i in range(200):
        capture = host0 + i / 30
        arrival = capture + 0.004 + rng.exponential(0.01)  # USB and scheduling delay, never negative
        errors.append(clock.to_host(dev0 + i / 30, arrival) - capture)
    assert max(abs(e) for e in errors[50:]) < 0.004 + 1e-3  # within the fixed part of the latency


def skip_without_pyrealsense2():
    # Skipped only when the extra is absent: a pyrealsense2 that is installed but fails to load
    # fails the test.
    if importlib.util.find_spec("pyrealsense2") is None:
        pytest.skip("pyrealsense2 is the [hardware] extra")


@pytest.fixture
def realsense():
    skip_without_pyrealsense2()
    from robot_rl.hardware.fakes.realsense_software import SoftwareRealSense

    with SoftwareRealSense(serial="sim0001", width=64, height=48, fps=30) as device:
        yield device


def test_realsense_colour_and_aligned_depth_through_librealsense(realsense):
    from robot_rl.hardware.realsense_camera import RealSenseCamera, RealSenseCameraConfig

    cam = RealSenseCamera(
        RealSenseCameraConfig("wrist", width=64, height=48, fps=30, depth=True, exposure=300),
        device=realsense.device,
    )
    cam.connect()
    try:
        time.sleep(0.3)
        frame = cam.read()
        n = int(frame.depth[0, 0]) - 500  # depth encodes the frame number
        np.testing.assert_array_equal(frame.image, realsense.image(n))
        assert frame.depth.dtype == np.uint16 and frame.depth.shape == (48, 64)
        assert 0 <= time.monotonic() - frame.timestamp < 0.1  # device stamps on the host clock
        sensor = [
            s
            for s in realsense.device.query_sensors()
            if s.get_info(realsense.rs.camera_info.name) == "RGB Camera"
        ][0]
        assert sensor.get_option(realsense.rs.option.exposure) == 300  # set and verified
        # A USB drop: frames stop, read() keeps the old frame (its age grows), and the camera
        # reopens the device when it is back.
        realsense.pause()
        time.sleep(1.6)
        assert time.monotonic() - cam.read().timestamp > 1.0 and "no frames" in cam.last_error
        realsense.resume()
        time.sleep(2.0)
        assert cam.reconnects >= 1 and time.monotonic() - cam.read().timestamp < 0.2
    finally:
        cam.disconnect()
    with pytest.raises(ConfigError, match="it offers 64x48@30"):
        RealSenseCamera(
            RealSenseCameraConfig("wrist", width=640, height=480), device=realsense.device
        ).connect()


def test_a_stale_frame_stops_the_loop(realsense):
    """A camera that stops delivering is an error the loop reports, not a silently repeated image."""
    from robot_rl.core.env import RobotEnv
    from robot_rl.hardware.realsense_camera import RealSenseCamera, RealSenseCameraConfig
    from robot_rl.sim.reach import make_reach_env

    sim_env = make_reach_env()
    cam = RealSenseCamera(
        RealSenseCameraConfig("wrist", width=64, height=48, fps=30), device=realsense.device
    )
    env = RobotEnv(sim_env.robot, sim_env.task, [cam], max_frame_age_s=0.2)
    seen, distinct = [], set()

    def policy(obs):
        seen.append(obs["image/wrist"].copy())
        distinct.add(seen[-1].tobytes())
        if len(distinct) == 3:  # live frames seen: now the camera stalls mid-episode
            realsense.pause()
        return np.zeros(env.action_space.shape, np.float32)

    loop = ControlLoop(env, policy=policy, rate_hz=30, execute_k=1)
    stopped = []
    env.robot.stop = lambda: stopped.append(True)
    with env:
        with pytest.raises(DeviceError, match="camera wrist: its newest frame is") as raised:
            loop.run_episode(seed=0)
    loop.close()
    assert isinstance(raised.value, StaleFrameError) and stopped  # the robot was stopped first
    # Live frames before the stall; after it, the policy saw the last frame again for at most the
    # frame-age limit (0.2 s = 6 steps at 30 Hz, +2 for a frame's own age), never on and on.
    repeats = next(
        (i for i, image in enumerate(reversed(seen[:-1])) if not np.array_equal(image, seen[-1])), len(seen)
    )
    assert len(distinct) >= 3 and repeats <= 8  # a frame in flight may still arrive after the pause


def test_find_cameras_lists_librealsense_devices():
    skip_without_pyrealsense2()
    from robot_rl.hardware.realsense_camera import find_realsense

    assert find_realsense() == []  # librealsense's context sees no USB camera on this machine
