"""``statecast models evaluate`` on small slices: every shipped model has an evaluator that
runs its ONNX file alone, and a figure away from the manifest fails the command.

The full evaluation (every held-out item) is a CLI run whose figures the audit reports;
it takes minutes, so it is not a test.
"""

from __future__ import annotations

import argparse
import re

import pytest

from statecast.cli import main
from statecast.contract.manifest import DEFAULT_MANIFEST, ManifestEntry, load_manifest
from statecast.contract.paths import PACKAGE_ROOT
from statecast.export import evaluate_cli
from statecast.export.evaluate_cli import EVALUATORS, Figure, evaluate, run_evaluate

LINE = re.compile(r"^ok   (\w+): .* model=([-0-9.e]+) .*\(slice\)$")


def test_every_shipped_model_has_an_evaluator() -> None:
    assert sorted(load_manifest(DEFAULT_MANIFEST)) == sorted(EVALUATORS)


def test_slice_of_every_model_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["models", "evaluate", "--limit", "24"])
    lines = capsys.readouterr().out.splitlines()
    found = {m.group(1): float(m.group(2)) for m in map(LINE.match, lines) if m}
    assert rc == 0
    assert sorted(found) == sorted(load_manifest(DEFAULT_MANIFEST))


def test_slice_figures_are_those_of_working_models() -> None:
    # A graph fed the wrong layout (pixels scaled twice, features out of order, state not
    # carried) lands far from these; the bounds sit well outside slice noise.
    entries = load_manifest(DEFAULT_MANIFEST)
    frame = evaluate(entries["frame_cnn"], PACKAGE_ROOT, 500)[0]
    sensor = evaluate(entries["sensor_lstm"], PACKAGE_ROOT, 200)[0]
    assert frame.value > 0.75  # chance is 0.1
    assert sensor.value < 0.05  # GW; the naive last value scores 0.09


def test_a_figure_off_the_manifest_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = load_manifest(DEFAULT_MANIFEST)["frame_cnn"]

    def off(e: ManifestEntry, *_: object) -> Figure:
        return Figure(e.name, "test_accuracy", 0.80, 0.8762, "lr", 0.8427, False, 10)

    monkeypatch.setitem(evaluate_cli.EVALUATORS, "frame_cnn", off)
    assert run_evaluate([entry], PACKAGE_ROOT, None, 2e-3) == 1
    assert capsys.readouterr().out.startswith("FAIL frame_cnn")


def test_tolerance_is_relative_and_absolute_when_set() -> None:
    fig = Figure("m", "acc", 0.9310, 0.9312, "b", 0.91, False, 1)
    assert fig.matches(1e-3)
    assert not fig.matches(1e-4)
    noisy = Figure("g", "acc", 0.50, 0.544, "b", None, True, 1, abs_tolerance=0.05)
    assert noisy.matches(1e-9)
    assert not Figure("g", "acc", 0.60, 0.544, "b", None, True, 1, abs_tolerance=0.05).matches(1)


def test_evaluate_options_parse() -> None:
    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser)
    args = parser.parse_args(["--limit", "3", "--tolerance", "0.01"])
    assert (args.limit, args.tolerance) == (3, 0.01)
