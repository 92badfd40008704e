"""Map the `plugins/` folder to the `sollol_plugins` import package; the rest is in pyproject."""

from setuptools import find_packages, setup

core = find_packages(include=["sollol", "sollol.*"])
plugins = [
    "sollol_plugins" + name.removeprefix("plugins")
    for name in find_packages(include=["plugins", "plugins.*"])
]

setup(packages=core + plugins, package_dir={"sollol_plugins": "plugins"})
