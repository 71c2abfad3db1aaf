"""The command line: help with examples, one-line errors, and the README's demo flow end to end."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import cli

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["layerflow-data", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


COMMANDS = ["build", "demo-source", "inspect", "validate", "eval-layers", "eval-matting", "filter", "report", "preview",
            "doctor", "train", "sample", "export", "eval", "reproduce", "models list", "models fetch", "models verify"]
ALIASES = ["eval-matting"]  # registered on another command's function
MAX_BODY_LINES = 15


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(cli.app, [*command.split(), "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and "layerflow-data" in result.output


def test_a_bad_option_is_one_clear_line(monkeypatch, capsys, tmp_path):
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tmp_path), "--out", str(tmp_path / "o"),
                            "--size", "255x256")
    assert code == 2
    assert "size: height and width must be even" in output and "Traceback" not in output


def test_an_unknown_backend_is_refused_before_any_work(monkeypatch, capsys, tmp_path):
    code, output = run_main(monkeypatch, capsys, "build", "--source", str(tmp_path), "--out", str(tmp_path / "o"),
                            "--matting", "magic", "--no-ray")
    assert code == 2 and "magic" in output
    assert not (tmp_path / "o").exists()


def test_inspect_of_a_folder_that_is_not_a_dataset(monkeypatch, capsys, tmp_path):
    code, output = run_main(monkeypatch, capsys, "inspect", str(tmp_path))
    assert code == 2 and "not a layerflow dataset" in output


@pytest.mark.slow
def test_demo_source_build_inspect_validate_and_eval(tmp_path):
    demo, out = tmp_path / "demo_src", tmp_path / "ds"
    assert runner.invoke(cli.app, ["demo-source", str(demo)]).exit_code == 0
    result = runner.invoke(cli.app, ["build", "--source", str(demo), "--out", str(out), "--no-ray"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "_summary.json").read_text())
    # 6 foregrounds x 2 backgrounds, less the 2 of the one held-out foreground: no background is held out with it
    assert summary["samples"]["by_kind"]["video_copy_paste"] == 10
    assert summary["samples"]["by_kind"]["image_frozen"] >= 6
    assert summary["samples"]["by_kind"]["video_decomposed"] == 6  # every demo clip mattes, and has a clean plate
    assert summary["inputs"]["accounted"] == summary["inputs"]["discovered"]
    assert summary["inputs"]["failed"] == 0

    inspected = runner.invoke(cli.app, ["inspect", str(out), "--json"])
    assert inspected.exit_code == 0 and json.loads(inspected.output)["samples"] == summary["samples"]["total"]
    validated = runner.invoke(cli.app, ["validate", str(out)])
    assert validated.exit_code == 0, validated.output

    # the demo's frozen-frame triplets are static on purpose: flagged for it, never rejected for it
    from manifests import io

    frozen = [row for row in io.read_manifest(out).to_pylist() if row["kind"] == "image_frozen"]
    assert frozen and all({"ssim_foreground_mean>0.995", "ssim_blended_mean>0.995"} <= set(row["flags"])
                          for row in frozen)
    assert not any(reason.startswith("ssim_") for row in frozen for reason in row["reject_reasons"])

    filtered = runner.invoke(cli.app, ["filter", str(out)])
    assert filtered.exit_code == 0 and f"of {summary['samples']['total']} samples" in filtered.output
    reported = runner.invoke(cli.app, ["report", str(out), "--gallery", "2"])
    assert reported.exit_code == 0, reported.output
    assert (out / "report.html").stat().st_size > 10_000
    previewed = runner.invoke(cli.app, ["preview", str(out), frozen[0]["sample_id"], "--out", str(tmp_path / "pv"),
                                        "--format", "webp"])
    assert previewed.exit_code == 0, previewed.output
    assert sorted(p.suffix for p in (tmp_path / "pv").iterdir()) == [".png", ".webp"]

    scored = runner.invoke(cli.app, ["eval-matting", "--videos", str(demo / "foreground"), "--masks",
                                     str(demo / "ground_truth"), "--matting", "bgsub"])
    assert scored.exit_code == 0, scored.output
    line = json.loads(scored.output.strip().splitlines()[-1])
    assert len(line["videos"]) == 6 and line["mean_iou"] >= 0.9


def test_every_command_is_one_library_call_between_parsing_and_printing():
    """A command's body (after its docstring) is at most 15 lines; the work is in the library."""
    tree = ast.parse(Path(cli.__file__).read_text(encoding="utf-8"))
    def is_command(node: ast.AST) -> bool:
        return isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command" for d in node.decorator_list)

    commands = {node.name: node for node in tree.body if is_command(node)}
    assert len(commands) == len(COMMANDS) - len(ALIASES)
    for name, node in commands.items():
        body = node.body[1:] if isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
            else node.body
        lines = body[-1].end_lineno - body[0].lineno + 1
        assert lines <= MAX_BODY_LINES, f"{name}: {lines} lines"


def test_importing_the_command_line_loads_no_model_or_cluster_library():
    probe = ("import sys, cli; "
             "print(sorted(m for m in ('torch', 'ray', 'open_clip', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_build_defaults_come_from_the_config():
    from datagen.config import BuildConfig

    params = {param.name: param for param in typer.main.get_command(cli.app).commands["build"].params}
    assert params["frames"].default == BuildConfig.frames and params["crf"].default == BuildConfig.crf
    assert params["size"].default == "x".join(map(str, BuildConfig.size))
    assert params["x264_preset"].default == BuildConfig.x264_preset == "veryfast"
    from recipes.config import ReproduceConfig

    reproduce = {param.name: param for param in typer.main.get_command(cli.app).commands["reproduce"].params}
    assert reproduce["eval_sampler"].default == ReproduceConfig.eval_sampler
    assert reproduce["eval_steps"].default == ReproduceConfig.eval_steps


def test_demo_source_names_its_profiles_and_refuses_another(tmp_path, monkeypatch, capsys):
    assert "heldout" in runner.invoke(cli.app, ["demo-source", "--help"]).output
    code, output = run_main(monkeypatch, capsys, "demo-source", str(tmp_path / "x"), "--profile", "huge")
    assert code == 2 and "must be one of default, heldout, got 'huge'" in output and not (tmp_path / "x").exists()
