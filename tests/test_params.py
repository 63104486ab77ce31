"""The params schema (pipeline/params.py): every profile validates; a wrong value of each kind is one line naming the
key, the value and what is allowed, and a stage exits 2 with it before any work; a stage run before its inputs
exist names the missing artifact and the stage that makes it."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ParamError
from pipeline.params import validate
from stages.common import outputs, stage_table

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = yaml.safe_load((ROOT / "profiles/small.yaml").read_text())


@pytest.mark.parametrize("name", ["small", "small-gpu", "tiny", "gritlm-7b"])
def test_every_profile_validates(name):
    params = yaml.safe_load((ROOT / f"profiles/{name}.yaml").read_text())
    assert validate(params) is params  # the stages read the dict as it is


def changed(path: str, value=None, delete: bool = False) -> dict:
    params = copy.deepcopy(DEFAULT)
    *parents, key = path.split(".")
    node = params
    for part in parents:
        node = node[part]
    if delete:
        del node[key]
    else:
        node[key] = value
    return params


@pytest.mark.parametrize("path, value, message", [
    ("mining.index", "annoy", "params.yaml: mining.index: 'annoy' is not allowed; expected one of 'flat', 'hnsw' or 'ivf'"),
    ("model.quantization", "nf8", "params.yaml: model.quantization: 'nf8' is not allowed; expected one of 'nf4'"),
    ("finetune.lr", -0.001, "params.yaml: finetune.lr: -0.001 is not allowed; expected > 0"),
    ("data.redial.valid_fraction", 1.5, "params.yaml: data.redial.valid_fraction: 1.5 is not allowed; expected < 1"),
    ("eval.max_retrieval.redial", -3, "params.yaml: eval.max_retrieval.redial: -3 is not allowed; expected >= 0"),
    ("finetune.steps", 1.5, "params.yaml: finetune.steps: 1.5 is not allowed; expected an integer"),
    ("negatives", True, "params.yaml: negatives: True is not allowed; expected an integer"),
    ("finetune.in_batch_negatives", "yes", "params.yaml: finetune.in_batch_negatives: 'yes' is not allowed; expected true or false"),
    ("data.datasets", ["redial", "movielens"], "params.yaml: data.datasets.1: 'movielens' is not allowed; expected one of"),
])
def test_a_wrong_value_is_one_line_naming_key_value_and_what_is_allowed(path, value, message):
    with pytest.raises(ParamError) as err:
        validate(changed(path, value))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_missing_key_and_an_unknown_key():
    with pytest.raises(ParamError, match=r"^params.yaml: finetune.lr: missing; expected a value$"):
        validate(changed("finetune.lr", delete=True))
    with pytest.raises(ParamError, match=r"^params.yaml: finetune.lrr: unknown key; expected one of steps, lr, "):
        validate(changed("finetune.lrr", 1e-3))
    with pytest.raises(ParamError, match=r"^params.yaml: extra: unknown key; expected one of profile, seed, "):
        validate(changed("extra", 1))


def test_rules_across_keys():
    validate(changed("item_offsets", {"fit": False, "lr": 0.001, "epochs": 0, "batch_size": 0}))  # not fitted: no schedule
    with pytest.raises(ParamError, match=r"^params.yaml: item_offsets: expected epochs >= 1, batch_size >= 1 and lr > 0 "):
        validate(changed("item_offsets.epochs", 0))
    with pytest.raises(ParamError, match=r"^params.yaml: expected ranking.candidates \(60\) <= eval.top_k \(50\)$"):
        validate(changed("ranking.candidates", 60))
    validate(changed("model.device", "cuda:1"))  # a device the loader takes, though not on this machine


def run_stage(root: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, REFICR_ROOT=str(root))
    env.pop("REFICR_DEBUG", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def project(tmp_path: Path, params: dict) -> Path:
    """A checkout's dvc.yaml and ``params`` in an empty folder: no data, no models."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def test_a_stage_with_a_wrong_param_exits_2_with_one_line_before_any_work(tmp_path):
    root = project(tmp_path, changed("mining.index", "annoy"))
    result = run_stage(root, "stages.mine_negatives")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: params.yaml: mining.index: 'annoy' is not allowed; expected one of 'flat', 'hnsw' or 'ivf'"


INPUT_STAGES = {name: stage for name, stage in stage_table(ROOT / "dvc.yaml").items()
                if any(not str(d).startswith(("pipeline/", "stages/")) for d in stage.get("deps", []))}


@pytest.mark.parametrize("name", sorted(INPUT_STAGES))
def test_a_stage_run_before_its_inputs_exist_names_them_and_the_stage_that_makes_them(tmp_path, name):
    stage = INPUT_STAGES[name]
    first = next(d for d in stage["deps"] if not d.startswith(("pipeline/", "stages/")))
    maker = next(n for n, s in stage_table(ROOT / "dvc.yaml").items() for out in outputs(s)
                 if first == out or first.startswith(out + "/"))
    root = project(tmp_path, DEFAULT)
    result = run_stage(root, *stage["cmd"].split("python -m ", 1)[1].split())
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (f"error: {first}: not found; expected the output of stage {maker} before {name}: "
                                     f"run `dvc repro {maker}` (or `dvc repro` for the whole pipeline)")
    assert not (root / "data").exists() or not any((root / "data").rglob("*"))  # nothing written
