"""Wheel builds compile the engine's and the shop's hot modules with mypyc (README "Compiled
build").

``pip install .``, ``uv build`` and ``make compiled`` make a wheel whose modules listed in
pyproject.toml (``[tool.hatch.build.targets.wheel.hooks.custom] compiled``) are C extensions
next to their ``.py``; the interpreter loads the extension. Editable installs (``make install``,
the dev tree) stay pure Python, so an edited ``.py`` is never shadowed by a stale ``.so``, and
``SAGAWAY_PURE=1`` builds a pure wheel (a machine without a C compiler). The modules are compiled
in a copy of the tree in a temporary folder, never next to the sources.

With gcc the C is built profile-guided (``ProfiledBuild``): built instrumented, run on
``tools/pgo_train.py``'s workload, built again with that profile, so gcc lays the hot code out
together and the cold out of the way (the compiled group is one ~2.5 MB ``.text``: instruction
cache misses cost it as much as its instructions). ``SAGAWAY_PGO=0``, another compiler, or any
step of it failing gives the plain build, with a message saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # the unit tests import ProfiledBuild from the dev tree, without hatchling
    BuildHookInterface = object

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


# The switch: "0" (or "off", "no", "false") builds without the profile.
PGO_SWITCH = "SAGAWAY_PGO"
TRAINING_SCRIPT = Path("tools") / "pgo_train.py"
# The training takes ~30 s on the instrumented build; a hung one falls back, not the build.
TRAINING_TIMEOUT_S = 900


# The compiled group is one shared object whose functions call each other and read each other's
# statics: with default visibility each such call went through the PLT and each read through
# the GOT (a symbol of a shared object may be interposed), ~2,900 exported symbols. Hidden, only
# PyInit_ is exported (the shims reach the group through a capsule, not by symbol); -fno-plt
# calls libpython's API through the GOT without the PLT's jump. With or without the profile.
LINKAGE_FLAGS = ["-fvisibility=hidden", "-fno-plt"]


class StepFailed(Exception):
    """A step of the profile-guided build failed: the plain build is made instead."""


class ProfiledBuild:
    """The extensions of a prepared work folder (``setup.py``, ``src``, ``mypy.toml``) built into
    ``work/lib``: profile-guided when it can be, plain otherwise. Each step a method, so the
    tests replace the compiler and the training run."""

    def __init__(self, work: Path, root: Path, say: Callable[[str], None]) -> None:
        self.work, self.root, self.say = work, root, say
        self.profile = work / "profile"

    def build(self) -> str:
        """Build; return "pgo" or "plain". Raises RuntimeError when the plain build fails."""
        compiler = compiler_name()
        linkage = LINKAGE_FLAGS if compiler in ("gcc", "clang") else []
        reason = self.why_not_pgo(compiler)
        if reason is None:
            try:
                self.compile(
                    cflags=[
                        *linkage,
                        f"-fprofile-generate={self.profile}",
                        "-fprofile-update=prefer-atomic",
                    ],
                    ldflags=[f"-fprofile-generate={self.profile}"],
                )
                self.train()
                if not any(self.profile.rglob("*.gcda")):
                    raise StepFailed("the training run wrote no profile")
                # -fprofile-partial-training: code the training did not run is optimised as in
                # the plain build (not for size). mypyc's -Werror meets the warnings a profile
                # adds (a function without counts): those only.
                self.compile(
                    cflags=[
                        *linkage,
                        f"-fprofile-use={self.profile}",
                        "-fprofile-partial-training",
                        "-Wno-missing-profile",
                        "-Wno-error=coverage-mismatch",
                    ],
                    ldflags=[],
                )
                return "pgo"
            except StepFailed as failure:
                reason = f"a step failed: {failure}"
        self.say(f"sagaway: plain compiled build, no profile-guided build ({reason})")
        try:
            self.compile(cflags=linkage, ldflags=[])
        except StepFailed as failure:
            raise RuntimeError(
                f"mypyc failed (SAGAWAY_PURE=1 builds without it):\n{failure}"
            ) from None
        return "plain"

    def why_not_pgo(self, compiler: str) -> str | None:
        if os.environ.get(PGO_SWITCH, "").lower() in ("0", "off", "no", "false"):
            return f"{PGO_SWITCH}={os.environ[PGO_SWITCH]}"
        if not (self.root / TRAINING_SCRIPT).is_file():
            return f"no {TRAINING_SCRIPT} in this tree"
        if compiler != "gcc":
            return f"the C compiler is {compiler}, not gcc"
        return None

    def compile(self, cflags: list[str], ldflags: list[str]) -> None:
        """One build of every extension from scratch (``--force``: a second build would
        otherwise keep the first's objects)."""
        for made in ("lib", "tmp"):
            shutil.rmtree(self.work / made, ignore_errors=True)
        env = dict(os.environ)
        for name, extra in (("CFLAGS", cflags), ("LDFLAGS", ldflags)):
            env[name] = " ".join([env.get(name, ""), *extra]).strip()
        build_ext = ["build_ext", "--force", "--build-lib", "lib", "--build-temp", "tmp"]
        built = subprocess.run(
            [sys.executable, "setup.py", *build_ext],
            cwd=self.work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if built.returncode:
            raise StepFailed(f"the C build failed:\n{built.stdout[-20000:]}")

    def train(self) -> None:
        """Run the training workload on the instrumented extensions, placed next to a copy of
        the sources (the wheel's layout); each process writes its counts at exit."""
        tree = self.work / "train"
        shutil.rmtree(tree, ignore_errors=True)
        shutil.copytree(self.work / "src", tree)
        for extension in (self.work / "lib").rglob("*.so"):
            shutil.copy(extension, tree / extension.relative_to(self.work / "lib"))
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
        try:
            ran = subprocess.run(
                [sys.executable, str(self.root / TRAINING_SCRIPT)],
                cwd=self.work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=TRAINING_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise StepFailed(f"the training run took over {TRAINING_TIMEOUT_S} s") from None
        if ran.returncode:
            raise StepFailed(f"the training run failed:\n{ran.stdout[-5000:]}")


def compiler_name() -> str:
    """ "gcc", "clang" or what else setuptools would call (``CC``, else Python's own)."""
    command = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    try:
        macros = subprocess.run(
            [*command, "-dM", "-E", "-x", "c", os.devnull],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return f"{command[0]} (not runnable)"
    if "__clang__" in macros:
        return "clang"
    return "gcc" if "__GNUC__" in macros else command[0]


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
        kind = ProfiledBuild(work, root, self.app.display_warning).build()
        self.app.display_info(f"sagaway: {kind} compiled build")
        for extension in (work / "lib").rglob("*.so"):
            build_data["force_include"][str(extension)] = str(extension.relative_to(work / "lib"))
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        work = getattr(self, "_work", None)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
