"""The shared training loop on the real small model: resume equivalence, seeded determinism, NaN stop."""

from __future__ import annotations

import copy
import csv
import random

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline.errors import ParamError
from pipeline.model.lm import LoraSettings, RetrievableLM
from pipeline.model.settings import Lengths
from pipeline.tasks import templates
from pipeline.training.loop import TrainConfig, TrainingDiverged, TrainLoop, linear_schedule
from pipeline.training.losses import joint_loss
from pipeline.training.objectives import (
    FinetuneObjective,
    GenerationTask,
    RetrievalTask,
    WarmupObjective,
    finetune_tasks,
    generation_weights,
)
from stages.common import ROOT
from stages.finetune import pass_settings

pytestmark = pytest.mark.slow

QUERIES = ["Seeker: I love space horror like Alien (1979)", "Seeker: any funny animated film for kids?",
           "Seeker: a classic western please", "Seeker: something romantic and sad"]
ITEMS = ["Aliens (1986). Genres: action, horror, sci-fi.", "Toy Story (1995). Genres: animation, comedy.",
         "Unforgiven (1992). Genres: drama, western.", "The Notebook (2004). Genres: drama, romance."]
LENGTHS = Lengths(query=32, document=24, prompt=64, target=16)


def objective() -> FinetuneObjective:
    docs = [[ITEMS[i], ITEMS[(i + 1) % 4]] for i in range(4)]
    keys = [[{f"i{i}"}, {f"i{(i + 1) % 4}"}] for i in range(4)]
    retrieval = [RetrievalTask("conv2item", templates.CONV2ITEM_QUERY, templates.CONV2ITEM_SAMPLE, QUERIES, docs,
                               [{f"i{i}"} for i in range(4)], keys)]
    generation = [GenerationTask("response", QUERIES, ["Try Aliens (1986)!", "Toy Story (1995).", "Unforgiven (1992).", "The Notebook."])]
    return FinetuneObjective(retrieval, generation, retrieval_batch=2, generation_batch=2, temperature=0.05, lengths=LENGTHS)


def train(base_dir, out, steps, stop_after=None, seed=0, fingerprint="f"):
    torch.manual_seed(123)  # LoRA init draws from the global RNG: make it the same for every run
    lm = RetrievableLM.load(base_dir, device="cpu", trainable=True)
    lm.attach_lora(LoraSettings(r=2, alpha=4, dropout=0.1, target_modules=["q_proj", "v_proj"]))
    config = TrainConfig(steps=steps, lr=1e-3, warmup_ratio=0.25, save_every=2, seed=seed)
    loop = TrainLoop(lm, config, objective(), out, stop_after=stop_after, fingerprint=fingerprint)
    loop.run()
    return loop


def adapter_weights(loop) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.clone() for k, v in get_peft_model_state_dict(loop.accelerator.unwrap_model(loop.lm.model)).items()}


def test_resume_gives_the_same_weights_as_a_straight_run(base_dir, tmp_path):
    straight = adapter_weights(train(base_dir, tmp_path / "a", steps=4))
    train(base_dir, tmp_path / "b", steps=4, stop_after=2)  # killed after step 2 (checkpoint at 2)
    assert (tmp_path / "b/checkpoint/state.safetensors").exists()
    resumed_loop = train(base_dir, tmp_path / "b", steps=4)
    resumed = adapter_weights(resumed_loop)
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0)
    with open(tmp_path / "b/loss.csv") as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["1", "2", "3", "4"]
    state = load_file(tmp_path / "b/checkpoint/state.safetensors")
    assert any(k.startswith("opt.") for k in state) and "rng.torch" in state


def test_two_seeded_runs_give_identical_weights_and_another_seed_does_not(base_dir, tmp_path):
    a = adapter_weights(train(base_dir, tmp_path / "a", steps=2))
    b = adapter_weights(train(base_dir, tmp_path / "b", steps=2))
    c = adapter_weights(train(base_dir, tmp_path / "c", steps=2, seed=1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_a_checkpoint_of_other_settings_is_not_resumed(base_dir, tmp_path):
    train(base_dir, tmp_path / "a", steps=4, stop_after=2)
    loop = train(base_dir, tmp_path / "a", steps=2, fingerprint="other data")
    with open(tmp_path / "a/loss.csv") as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["1", "2"]
    assert loop.step == 2


def test_loss_goes_down_and_is_logged(base_dir, tmp_path):
    train(base_dir, tmp_path / "a", steps=8)
    with open(tmp_path / "a/loss.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"step", "loss", "loss_cl", "loss_gen", "lr"}
    first = sum(float(r["loss"]) for r in rows[:2]) / 2
    last = sum(float(r["loss"]) for r in rows[-2:]) / 2
    assert last < first


def test_nan_loss_stops_with_a_clear_message(base_dir, tmp_path):
    lm = RetrievableLM.load(base_dir, device="cpu", trainable=True)
    lm.attach_lora(LoraSettings(r=2, alpha=4, target_modules=["q_proj"]))

    def nan_loss(lm, rng):
        zero = sum(p.sum() for p in lm.model.parameters() if p.requires_grad) * 0
        return joint_loss(zero + float("nan"), zero, 1.0, 1.0)

    with pytest.raises(TrainingDiverged, match="loss is nan at step 0"):
        TrainLoop(lm, TrainConfig(steps=2, lr=1e-3), nan_loss, tmp_path / "x").run()


def test_warmup_objective_masks_in_batch_false_negatives(base_dir):
    lm = RetrievableLM.load(base_dir, device="cpu")
    task = RetrievalTask("conv2item", templates.CONV2ITEM_QUERY, templates.CONV2ITEM_SAMPLE, QUERIES[:2],
                         [[ITEMS[0]], [ITEMS[0]]], [{"i0"}, {"i0"}], [[{"i0"}], [{"i0"}]])
    out = WarmupObjective([task], batch_size=2, temperature=0.05, lengths=LENGTHS)(lm, random.Random(0))
    # both queries' positives are the same item: with masking each query sees only its own positive
    assert out.loss_cl.item() == pytest.approx(0.0, abs=1e-6)


def test_linear_schedule():
    assert [round(linear_schedule(s, 10, 0.2), 3) for s in range(10)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]


def generation_objective(weights: dict[str, int], batch: int) -> FinetuneObjective:
    """Three generation tasks whose instances name their task (prompt 'ranking 3', target 'ranking 3 target')."""
    tasks = [GenerationTask(name, [f"{name} {i}" for i in range(5)], [f"{name} {i} target" for i in range(5)], weights[name])
             for name in ("ranking", "dm", "response")]
    return FinetuneObjective([], tasks, 0, batch, 0.05, LENGTHS)


def test_equal_generation_weights_draw_as_the_uniform_choice_did():
    """Weights 1/1/1 (every profile's) must draw exactly what the task-uniform draw did: committed runs reproduce."""
    tasks = generation_objective({"ranking": 1, "dm": 1, "response": 1}, batch=6).generation
    rng = random.Random(7)
    before = []
    for _ in range(6):  # the draw before generation_weights existed
        task = tasks[rng.randrange(len(tasks))]
        i = rng.randrange(len(task))
        before.append((task.prompts[i], task.targets[i]))
    assert generation_objective({"ranking": 1, "dm": 1, "response": 1}, batch=6).generation_picks(random.Random(7)) == before


def test_generation_weights_set_how_often_each_task_is_drawn():
    rng = random.Random(0)
    picks = [p for _ in range(500) for p, _ in generation_objective({"ranking": 2, "dm": 0, "response": 1}, 6).generation_picks(rng)]
    share = {name: sum(p.startswith(name) for p in picks) / len(picks) for name in ("ranking", "dm", "response")}
    assert share["dm"] == 0  # weight 0: never drawn
    assert abs(share["ranking"] - 2 / 3) < 0.03 and abs(share["response"] - 1 / 3) < 0.03  # 3,000 draws: sd ~0.009
    assert generation_objective({"ranking": 0, "dm": 0, "response": 0}, 6).generation_picks(rng) == []  # no LM loss


@pytest.mark.parametrize("weights", [{"ranking": 1, "dm": 1}, {"ranking": 1, "dm": -1, "response": 1},
                                     {"ranking": 1, "dm": 0.5, "response": 1}, {"ranking": 1, "dm": True, "response": 1},
                                     {"ranking": 1, "dm": 1, "response": 1, "chat": 1}])
def test_bad_generation_weights_are_refused_by_name(weights):
    with pytest.raises(ParamError, match=r"finetune\.generation_weights .*expected a non-negative integer for each of "
                                         r"ranking, dm, response"):
        generation_weights(weights)


def test_finetune_tasks_carry_the_weights():
    frame = pd.DataFrame({"prompt": ["p"], "target": ["t"]})
    empty = pd.DataFrame({c: [] for c in ("query", "positive", "negatives", "gold_item_ids", "item_id", "negative_ids",
                                          "positive_gold_item_ids", "negative_gold_item_ids")})
    _, generation = finetune_tasks(empty, empty, frame, frame, frame, {"ranking": 1, "dm": 0, "response": 3})
    assert [(t.name, t.weight) for t in generation] == [("ranking", 1), ("dm", 0), ("response", 3)]
    assert generation_weights(None) == {"ranking": 1, "dm": 1, "response": 1}


def test_the_trunk_pass_settings_come_from_the_profile_and_refuse_what_it_cannot_run(monkeypatch):
    params = yaml.safe_load((ROOT / "profiles/small.yaml").read_text())
    params["model"]["inference_dtype"] = "float32"
    params["finetune"]["trunk_pass"]["passes"] = 2
    settings = pass_settings(params)
    assert (settings.passes, settings.lr, settings.bias_lr, settings.batch_size) == (2, 5e-4, 0.01, 16)
    assert settings.query_length == params["lengths"]["query"] and settings.cache_dtype == torch.float32
    none = copy.deepcopy(params)
    none["finetune"]["trunk_pass"]["passes"] = 0
    assert pass_settings(none) is None
    mined = copy.deepcopy(params)
    mined["finetune"]["retrieval_objective"] = "mined"
    with pytest.raises(ParamError, match="retrieval_objective: catalogue"):
        pass_settings(mined)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ParamError, match="one process"):
        pass_settings(params)
