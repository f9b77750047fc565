"""Only for colcon, which builds a ROS 2 ament_python package with `python setup.py egg_info build install
...` and reads setup()'s options (data_files among them) by running this file (colcon-core's
PythonBuildTask, colcon-ros' ament_python task). All metadata is in pyproject.toml; pip does not need this."""

from pathlib import Path

import setuptools

if int(setuptools.__version__.split(".")[0]) < 77:  # pyproject.toml's SPDX license needs 77
    raise RuntimeError(
        f"robot_rl needs setuptools>=77, not {setuptools.__version__}: pip install 'setuptools>=77'"
    )

here = Path(__file__)
if here.is_symlink():  # `colcon build --symlink-install` runs a link to this file in its build folder,
    for name in ("pyproject.toml", "README.md", "LICENSE"):  # beside links to the package alone
        if not (here.parent / name).exists():
            (here.parent / name).symlink_to(here.resolve().parent / name)

dist = setuptools.setup()
# colcon reads the options as repr() + ast.literal_eval, which fails on setuptools' SpecifierSet for
# requires-python; a string says the same. (Only colcon's read stops here: a build has run already.)
dist.python_requires = dist.metadata.python_requires = str(dist.python_requires)
