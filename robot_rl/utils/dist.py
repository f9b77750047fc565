"""Where work runs: one process (the default), Ray on this machine, or a Ray cluster.

`dist` in a config: `none` (one process), `local` (a Ray started here with this machine's
cores), `ray` (the cluster at `ray_address`; without one, the cluster this machine belongs to
if `ray start` made one or RAY_ADDRESS names it, else a Ray started here).
"""

from __future__ import annotations

import contextlib
import os

from robot_rl.errors import ConfigError, require

DIST_MODES = ("none", "local", "ray")


def check_dist(dist: str | None) -> str:
    dist = dist or "none"
    if dist not in DIST_MODES:
        raise ConfigError(f"dist must be one of {', '.join(DIST_MODES)}, got {dist!r}")
    return dist


def gpus_for(device: str | None) -> float:
    """GPUs a Ray actor or task must ask for to see one (Ray hides the GPUs from the others):
    one for device=cuda, one for device=auto where the cluster has any, none for the CPU."""
    import ray

    device = (device or "auto").lower()
    if device == "cpu":
        return 0.0
    return 1.0 if device.startswith("cuda") or ray.cluster_resources().get("GPU", 0) > 0 else 0.0


@contextlib.contextmanager
def ray_session(dist: str, address: str | None = None, num_cpus: int | None = None):
    """Ray, started (and shut down after) unless one is already running in this process."""
    ray = require("ray", "dist", f"dist={dist}")
    if ray.is_initialized():
        yield ray
        return
    if dist == "local":  # a new Ray here, even where RAY_ADDRESS names a cluster
        kwargs = {"address": "local", "num_cpus": num_cpus or os.cpu_count()}
    else:
        kwargs = {"address": address} if address else {}
    try:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()
