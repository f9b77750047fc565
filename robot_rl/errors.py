"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2."""


class RobotRLError(Exception):
    """Base class for mistakes the user can correct (bad path, bad config, schema mismatch...)."""


class ConfigError(RobotRLError):
    """A configuration value is unknown, missing or out of range."""


class DatasetError(RobotRLError):
    """A dataset path is missing, unreadable or not an episode store."""


class SchemaMismatchError(DatasetError):
    """An episode does not match the schema of the store it is appended to."""


class DeviceError(RobotRLError):
    """A device is not there, does not answer, or was lost while running."""


class StaleFrameError(DeviceError):
    """A camera's newest frame is older than the loop allows."""


class MissingExtraError(RobotRLError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, what: str = ""):
        needed_for = f" (needed for {what})" if what else ""
        super().__init__(f"{package} is not installed{needed_for}: install robot_rl[{extra}]")
        self.package, self.extra = package, extra


def require(module: str, extra: str, what: str = ""):
    """Import an optional dependency lazily, or raise MissingExtraError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module.split(".")[0], extra, what) from exc
