"""The one skip-or-fail rule for server-backed tests (``tests/servers.py``): an unreachable
server skips locally and fails under any truthy ``CI``, however the CI service spells it."""

from __future__ import annotations

import pytest

import servers


@pytest.mark.parametrize("value", ["1", "true", "True", "TRUE", "yes", "on", "github-actions"])
def test_any_truthy_ci_counts_as_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert servers.in_ci()


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", "off"])
def test_an_explicit_false_or_no_ci_is_local(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert not servers.in_ci()


def test_no_ci_variable_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert not servers.in_ci()


def _down() -> None:
    raise ConnectionRefusedError("connection refused")


def test_an_unreachable_server_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    monkeypatch.setattr(servers, "_verdicts", {})
    with pytest.raises(pytest.fail.Exception, match=r"down-server is not reachable .*CI=1"):
        servers.require_server("down-server", _down)


def test_an_unreachable_server_skips_locally_and_is_checked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(servers, "_verdicts", {})
    checks: list[int] = []

    def down_once_counted() -> None:
        checks.append(1)
        _down()

    for _ in range(2):
        with pytest.raises(pytest.skip.Exception, match="ConnectionRefusedError"):
            servers.require_server("down-server", down_once_counted)
    assert checks == [1], "the verdict is cached per session"


def test_a_reachable_server_neither_skips_nor_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    monkeypatch.setattr(servers, "_verdicts", {})
    servers.require_server("up-server", lambda: None)
