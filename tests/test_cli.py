import pytest

from throttllem.cli import build_parser, main

SUBCOMMANDS = ["run", "serve", "govern", "twin", "replay", "profile", "train", "bench"]


def test_every_subcommand_is_listed_in_the_top_level_help(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in help_text


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"throttllem {name}" in capsys.readouterr().out


def test_run_takes_consecutive_twin_ports_by_default():
    args = build_parser().parse_args(["run"])
    ports = [
        args.twin_http_port,
        args.twin_grpc_port,
        args.twin_metrics_port,
        args.twin_control_port,
    ]
    assert ports == [8010, 8011, 8012, 8013]


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


def test_bench_twin_with_a_missing_trace_says_so(tmp_path, capsys: pytest.CaptureFixture[str]):
    assert main(["bench", "twin", "--trace", str(tmp_path / "missing.csv")]) == 2
    assert "no trace at" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["twin"], ["run"]])
def test_an_unknown_twin_profile_is_refused_before_anything_starts(command, capsys):
    flag = "--profile" if command == ["twin"] else "--twin-profile"
    assert main([*command, flag, "a100-40gb/llama-2-13b/tp3"]) == 2
    assert "known profiles: a100-40gb/llama-2-13b/tp1" in capsys.readouterr().err
