"""`recsys experiments ope` refuses arguments that cannot mean what they say with a one-line error
(exit 2) before it starts Spark: an empty time window, and a `--param policy=…` beside `--policy`
(which the command used to drop silently, evaluating `--policy`'s target)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from feature_store.settings import Settings
from services.cli import app as cli


@pytest.fixture
def no_spark(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Spark session was started")

    monkeypatch.setattr("services.cli.batch._session", refuse)


@pytest.mark.parametrize(("args", "message"), [
    (["--policy", "greedy", "--since", "2026-03-02", "--until", "2026-03-01"],
     "error: --since 2026-03-02T00:00:00 is not before --until 2026-03-01T00:00:00: no request is served in [since, until)"),
    (["--policy", "greedy", "--since", "2026-03-01", "--until", "2026-03-01"], "is not before --until"),
    (["--policy", "greedy", "--param", "policy=thompson"],
     "error: --param 'policy=thompson': the target policy is --policy's ('greedy'); give its parameters with --param"),
    (["--policy", "epsilon_greedy", "--param", "epsilon=0.05", "--param", "policy=epsilon_greedy"], "the target policy is --policy's"),
])  # fmt: skip
def test_ope_refuses_contradictory_arguments_before_spark(settings: Settings, no_spark: None, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["experiments", "ope", *args, "--state-dir", str(settings.state_dir)])
    assert result.exit_code == 2 and message in result.output, (result.exit_code, result.output, result.exception)
    assert len(result.output.strip().splitlines()) == 1, result.output
