"""Wheel builds compile the engine's and the shop's hot modules with mypyc (README "Compiled build").

``pip install .``, ``uv build`` and ``make compiled`` make a wheel whose modules listed in
pyproject.toml (``[tool.hatch.build.targets.wheel.hooks.custom] compiled``) are C extensions
next to their ``.py``; the interpreter loads the extension. Editable installs (``make install``,
the dev tree) stay pure Python, so an edited ``.py`` is never shadowed by a stale ``.so``, and
``SAGAWAY_PURE=1`` builds a pure wheel (a machine without a C compiler). The modules are compiled
in a copy of the tree in a temporary folder, never next to the sources.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SETUP = """\
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="sagaway-compiled",
    ext_modules=mypycify(
        ["--config-file", "mypy.toml", *{modules!r}], opt_level="3", group_name="sagaway"
    ),
)
"""


class MypycBuildHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable" or os.environ.get("SAGAWAY_PURE"):
            return
        modules = list(self.config["compiled"])
        self._work = work = Path(tempfile.mkdtemp(prefix="sagaway-mypyc-"))
        root = Path(self.root)
        shutil.copytree(
            root / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.so")
        )
        # mypy reads [tool.mypy] (strict, the pydantic plugin) from it; not named pyproject.toml,
        # whose [project] table setuptools would read as this throwaway build's.
        shutil.copy(root / "pyproject.toml", work / "mypy.toml")
        (work / "setup.py").write_text(SETUP.format(modules=modules))
        built = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--build-lib", "lib", "--build-temp", "tmp"],
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if built.returncode:
            raise RuntimeError(f"mypyc failed (SAGAWAY_PURE=1 builds without it):\n{built.stdout}")
        for extension in (work / "lib").rglob("*.so"):
            build_data["force_include"][str(extension)] = str(extension.relative_to(work / "lib"))
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        work = getattr(self, "_work", None)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
