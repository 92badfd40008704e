"""Map the `plugins/` folder to the `sollol_plugins` import package; the rest is in pyproject.

Folders that hold only data (the dashboard's `static/`, the scaffold's templates) are listed as
packages too (namespace packages): setuptools copies package data only from listed packages,
and warns about every data folder that is not one.
"""

from setuptools import find_namespace_packages, setup

NOT_PACKAGES = ["*.__pycache__", "*.egg-info"]
core = find_namespace_packages(include=["sollol", "sollol.*"], exclude=NOT_PACKAGES)
plugins = [
    "sollol_plugins" + name.removeprefix("plugins")
    for name in find_namespace_packages(include=["plugins", "plugins.*"], exclude=NOT_PACKAGES)
]

setup(packages=core + plugins, package_dir={"sollol_plugins": "plugins"})
