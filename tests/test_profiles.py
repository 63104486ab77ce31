"""Every shipped profile loads and has exactly the keys of the default profile (torchtune-style: profiles as data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def keys(tree, prefix=""):
    out = set()
    for k, v in tree.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k not in ("max_train_turns", "max_retrieval", "max_generation"):
            out |= keys(v, prefix + k + ".")
    return out


@pytest.mark.parametrize("name", ["small", "small-gpu", "tiny", "gritlm-7b"])
def test_profile_has_the_default_keys(name):
    default = yaml.safe_load((ROOT / "profiles/small.yaml").read_text())
    profile = yaml.safe_load((ROOT / f"profiles/{name}.yaml").read_text())
    assert profile["profile"] == name
    assert keys(profile) == keys(default)


def test_gritlm_profile_carries_the_papers_settings():
    p = yaml.safe_load((ROOT / "profiles/gritlm-7b.yaml").read_text())
    assert p["model"]["quantization"] == "nf4" and p["model"]["dtype"] == "bfloat16" and p["model"]["device"] == "cuda"
    assert p["model"]["lora"] == {"r": 64, "alpha": 16, "dropout": 0.05, "layers": "all",
                                  "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    assert p["finetune"]["lr"] == 2.0e-5 and p["finetune"]["temperature"] == 0.02 and p["negatives"] == 9
    assert p["finetune"]["retrieval_objective"] == "mined"  # the paper's Eq. 4-5, not the CPU extension
    assert p["warmup"]["retrieval_objective"] == "in_batch"  # the paper's Eq. 1
    assert (p["lengths"]["query"], p["lengths"]["document"], p["lengths"]["prompt"]) == (512, 1024, 2048)


def test_cli_switches_profiles(tmp_path):
    from typer.testing import CliRunner

    from pipeline.service.cli import app

    (tmp_path / "profiles").mkdir()
    for name in ("small", "tiny"):
        (tmp_path / f"profiles/{name}.yaml").write_text((ROOT / f"profiles/{name}.yaml").read_text())
    result = CliRunner().invoke(app, ["profile", "tiny", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["profile"] == "tiny"
    assert CliRunner().invoke(app, ["profile", "huge", "--root", str(tmp_path)]).exit_code != 0
