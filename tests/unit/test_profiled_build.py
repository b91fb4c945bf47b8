"""The wheel's profile-guided build (hatch_build.py's ``ProfiledBuild``, README "Compiled
build"): which builds run with which flags, and that every way the profile step can fail ends in
the plain build with the reason said, never in a failed or half-profiled wheel. The compiler and
the training run are replaced (a C build takes a minute); the training's own failure is a real
child process."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sagaway_hatch_build", ROOT / "hatch_build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hook = load_hook()


class FakeBuild(hook.ProfiledBuild):
    """Records each compile's flags; fails the steps named in ``failing``."""

    def __init__(self, work: Path, failing: set[str] | None = None) -> None:
        self.said: list[str] = []
        super().__init__(work, ROOT, self.said.append)
        self.failing = failing or set()
        self.compiles: list[str] = []
        self.linkage: list[list[str]] = []

    def compile(self, cflags: list[str], ldflags: list[str]) -> None:
        kind = "plain"
        if any(flag.startswith("-fprofile-generate=") for flag in cflags):
            kind = "instrumented"
            assert ldflags == [f for f in cflags if f.startswith("-fprofile-generate=")]
        elif any(flag.startswith("-fprofile-use=") for flag in cflags):
            kind = "profiled"
        self.compiles.append(kind)
        self.linkage.append([flag for flag in cflags if flag in hook.LINKAGE_FLAGS])
        if kind in self.failing:
            raise hook.StepFailed(f"{kind} C build failed")

    def train(self) -> None:
        if "training" in self.failing:
            raise hook.StepFailed("the training run failed")
        if "no-profile" not in self.failing:
            self.profile.mkdir(parents=True, exist_ok=True)
            (self.profile / "native.gcda").write_bytes(b"counts")


@pytest.fixture(autouse=True)
def gcc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hook.PGO_SWITCH, raising=False)
    monkeypatch.setattr(hook, "compiler_name", lambda: "gcc")


def test_with_gcc_it_builds_instrumented_trains_and_builds_with_the_profile(tmp_path: Path) -> None:
    build = FakeBuild(tmp_path)
    assert build.build() == "pgo"
    assert build.compiles == ["instrumented", "profiled"]
    assert build.linkage == [hook.LINKAGE_FLAGS] * 2  # the profile must see the final code
    assert build.said == []


@pytest.mark.parametrize(
    ("failing", "compiles", "reason"),
    [
        ({"instrumented"}, ["instrumented", "plain"], "instrumented C build failed"),
        ({"training"}, ["instrumented", "plain"], "the training run failed"),
        ({"no-profile"}, ["instrumented", "plain"], "wrote no profile"),
        ({"profiled"}, ["instrumented", "profiled", "plain"], "profiled C build failed"),
    ],
)
def test_a_failed_step_falls_back_to_the_plain_build_and_says_why(
    tmp_path: Path, failing: set[str], compiles: list[str], reason: str
) -> None:
    build = FakeBuild(tmp_path, failing)
    assert build.build() == "plain"
    assert build.compiles == compiles
    assert build.linkage[-1] == hook.LINKAGE_FLAGS
    [message] = build.said
    assert "plain compiled build" in message
    assert reason in message


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_the_switch_turns_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(hook.PGO_SWITCH, value)
    build = FakeBuild(tmp_path)
    assert build.build() == "plain"
    assert build.compiles == ["plain"]
    assert f"{hook.PGO_SWITCH}={value}" in build.said[0]


@pytest.mark.parametrize(("compiler", "linkage"), [("clang", hook.LINKAGE_FLAGS), ("icx", [])])
def test_another_compiler_gets_the_plain_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiler: str, linkage: list[str]
) -> None:
    monkeypatch.setattr(hook, "compiler_name", lambda: compiler)
    build = FakeBuild(tmp_path)
    assert build.build() == "plain"
    assert build.compiles == ["plain"]
    assert build.linkage == [linkage]  # flags gcc's and clang's, no other's
    assert f"the C compiler is {compiler}, not gcc" in build.said[0]


def test_a_failed_plain_build_fails_the_wheel(tmp_path: Path) -> None:
    build = FakeBuild(tmp_path, {"instrumented", "plain"})
    with pytest.raises(RuntimeError, match="SAGAWAY_PURE=1 builds without it"):
        build.build()


def fake_compiler(tmp_path: Path, macros: str) -> str:
    script = tmp_path / "cc"
    script.write_text(f"#!/bin/sh\nprintf '{macros}'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.mark.parametrize(
    ("macros", "name"),
    [
        ("#define __GNUC__ 12\\n", "gcc"),
        ("#define __GNUC__ 4\\n#define __clang__ 1\\n", "clang"),
    ],
)
def test_the_compiler_is_told_by_its_macros(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, macros: str, name: str
) -> None:
    monkeypatch.undo()  # the real compiler_name, not the fixture's
    monkeypatch.setenv("CC", fake_compiler(tmp_path, macros))
    assert hook.compiler_name() == name


def test_a_compiler_that_is_not_there_is_not_gcc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    monkeypatch.setenv("CC", "/nonexistent/cc -O2")
    assert hook.compiler_name() == "/nonexistent/cc (not runnable)"


def test_a_training_run_that_exits_non_zero_is_a_failed_step(tmp_path: Path) -> None:
    """What ``tools/pgo_train.py`` does when the extensions it gets are not the compiled ones."""
    root, work = tmp_path / "root", tmp_path / "work"
    (root / "tools").mkdir(parents=True)
    (root / hook.TRAINING_SCRIPT).write_text("import sys\nsys.exit('not the compiled module')\n")
    (work / "src" / "pkg").mkdir(parents=True)
    (work / "lib" / "pkg").mkdir(parents=True)
    (work / "lib" / "pkg" / "mod.so").write_bytes(b"")
    build = hook.ProfiledBuild(work, root, print)
    with pytest.raises(hook.StepFailed, match="not the compiled module"):
        build.train()
    assert (work / "train" / "pkg" / "mod.so").exists()  # next to the sources, as in the wheel
