"""One options schema: the API, the command line, the record and the identity all come from EvalOptions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from ncbounds.cli.common import _options_from
from ncbounds.cli.main import main

from ncbounds.batch import options_hash
from ncbounds.bounds.runner import resolve_bound_options, select_bounds
from ncbounds.errors import UsageError
from ncbounds.options import EvalOptions, option_fields

REPO = Path(__file__).resolve().parents[1]
FEATURES = REPO / "data" / "example_features.npz"
FIXTURE = REPO / "data" / "fixtures" / "demo-records" / "records" / "epoch_08.pt.json"


def test_every_flagged_field_is_a_command_line_option():
    help_text = CliRunner().invoke(main, ["report", "--help"], terminal_width=200).output
    for f in option_fields():
        if f.metadata["flag"]:
            assert f.metadata["flag"] in help_text, f.name
    assert "--progress" not in help_text and "--debug" in help_text  # progress comes from --quiet


def test_command_line_and_api_build_the_same_options():
    kw = {f.name: (f.default if f.default is not dataclasses.MISSING else None) for f in option_fields() if f.metadata["flag"]}
    kw.update(arch="mlp:width=8", arch_kwargs='{"depth": 2}', shots="1,5", delta=0.01, bound_options=("collapse.split=train",
                                                                                                     "pacbayes_gauss.screen=4"))
    opts = _options_from(kw)
    assert opts == EvalOptions(arch="mlp:width=8", arch_kwargs={"depth": 2}, shots=(1, 5), delta=0.01,
                               bound_options={"collapse": {"split": "train"}, "pacbayes_gauss": {"screen": 4}})
    with pytest.raises(UsageError, match="NAME.KEY=VALUE"):
        _options_from({**kw, "bound_options": ("pacbayes_gauss",)})


def test_identity_of_records_written_by_0_1_is_unchanged():
    """The demo fixture's record (written by 0.1) has the same options hash today: it stays current."""
    record = json.loads(FIXTURE.read_text())
    opts = EvalOptions(layers="all", device="cpu", seed=0, bounds="default")
    assert options_hash(opts) == record["batch"]["options_hash"]


def test_identity_leaves_out_what_cannot_change_numbers_and_new_fields_at_default():
    base = EvalOptions()
    names = select_bounds(base.bounds)
    for field_name, value in (("device", "cpu"), ("batch_size", 7), ("trust_checkpoint", True), ("trust_code", True)):
        assert options_hash(dataclasses.replace(base, **{field_name: value}), names) == options_hash(base, names), field_name
    assert "bound_options" not in base.identity(names)
    changed = dataclasses.replace(base, bound_options={"collapse": {"split": "train"}})
    assert options_hash(changed, names) != options_hash(base, names)
    assert options_hash(dataclasses.replace(base, delta=0.01), names) != options_hash(base, names)
    record = base.to_record()
    assert "progress" not in record and "debug" not in record and record["bound_options"] == {}


@pytest.mark.parametrize("field_name, value, words", [
    ("batch_size", 0, "batch_size (--batch-size) must be a positive integer"),
    ("delta", 1.5, "delta (--delta) must lie strictly between 0 and 1"),
    ("device", "tpu", "device (--device) must be auto, cpu or cuda"),
    ("mc_samples", 0, "mc_samples (--mc-samples)"),
    ("shots", (0,), "shots (--shots)"),
    ("bounds", "nope", "unknown bound 'nope'"),
    ("bound_options", {"pacbayes_gauss": {"sigma_grid": (0.1,)}}, "not selected"),
])
def test_validation_names_the_keyword_and_the_flag(field_name, value, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        dataclasses.replace(EvalOptions(), **{field_name: value}).validate()


def test_bound_options_are_typed_and_checked():
    selected = select_bounds("all")
    out = resolve_bound_options({"jiang-flatness": {"mc_samples": 20}, "jiang_pacbayes_init": {"target_deviation": 0.05},
                                 "pacbayes_gauss": {"sigma_grid": (0.1, 0.01), "mc_delta_fraction": 0.3}}, selected)
    assert out["jiang_pacbayes_init"].mc_samples == 20 and out["jiang_pacbayes_init"].target_deviation == 0.05
    assert out["jiang_pacbayes_flatness"].mc_samples == 20 and out["jiang_pacbayes_flatness"].target_deviation == 0.1
    assert out["pacbayes_gauss"].sigma_grid == (0.1, 0.01) and out["pacbayes_gauss"].mc_delta_fraction == 0.3
    assert isinstance(resolve_bound_options({"pacbayes_gauss": {"sigma_grid": 0.1}}, selected)["pacbayes_gauss"].sigma_grid, tuple)
    for raw, words in (({"nope": {"x": 1}}, "neither a bound nor a group"),
                       ({"pacbayes_gauss": {"screens": 1}}, "unknown setting"),
                       ({"pacbayes_gauss": {"screen": "many"}}, "must be an integer"),
                       ({"pacbayes_gauss": {"mc_delta_fraction": 1.5}}, "must lie in \\(0, 1\\)"),
                       ({"collapse": {"split": "valid"}}, "'train' or 'test'"),
                       ({"test_cp": {"x": 1}}, "unknown setting")):
        with pytest.raises(UsageError, match=words):
            resolve_bound_options(raw, selected)


def test_bound_option_changes_the_result_and_is_recorded():
    out = CliRunner().invoke(main, ["report", "--data", f"features:{FEATURES}", "--bounds", "luthra_old", "--format", "json",
                                    "--bound-option", "collapse.split=train"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    assert record["options"]["bound_options"] == {"collapse": {"split": "train"}}
    assert record["bounds"][0]["inputs"]["split"] == "train"
    default = json.loads(CliRunner().invoke(main, ["report", "--data", f"features:{FEATURES}", "--bounds", "luthra_old",
                                                   "--format", "json"]).stdout)
    assert default["bounds"][0]["inputs"]["split"] == "test" and default["bounds"][0]["value"] != record["bounds"][0]["value"]
    explained = CliRunner().invoke(main, ["list-bounds", "--explain", "luthra_old"]).output
    assert "luthra_old.split: str = 'test'" in explained
