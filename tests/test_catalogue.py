"""The catalogue objective (pipeline.training.catalogue), LoRA on the top layers, and dtype detection: numbers worked out
by hand on toy tables, then the real small model trained a few steps."""

from __future__ import annotations

import math
import random
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from pipeline import hardware
from pipeline.errors import DataError, MissingArtifactError
from pipeline.model.lm import LoraSettings, RetrievableLM
from pipeline.model.settings import GENERATION_ADAPTER, Lengths, ModelSettings, generation_adapter
from pipeline.model.trunk import bottom_fingerprint
from pipeline.retrieval.corpus import ItemCorpus, rank_scores
from pipeline.retrieval.popularity import item_counts
from pipeline.tasks import templates
from pipeline.training.catalogue import (
    CatalogueValidation,
    catalogue_loss,
    catalogue_tasks,
    prior_sweep,
    recall_per_item,
)
from pipeline.training.loop import TrainConfig, TrainLoop
from pipeline.training.objectives import FinetuneObjective, GenerationTask
from pipeline.training.trunk_pass import PassSettings, trunk_pass, unique_queries

CPU = ModelSettings(device="cpu", dtype="float32", quantization=None, inference_dtype="float32")
TABLE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


def test_catalogue_loss_is_cross_entropy_over_every_item():
    q = torch.tensor([[1.0, 0.0]])
    # logits = cos / 0.5 = [2, 0, -2]; target 0: -log(e^2 / (e^2 + 1 + e^-2))
    expected = -math.log(math.e ** 2 / (math.e ** 2 + 1 + math.e ** -2))
    assert catalogue_loss(q, TABLE, torch.tensor([0]), 0.5).item() == pytest.approx(expected, rel=1e-5)
    # a bias moves the logits: +2 on item 1 -> [2, 2, -2]
    expected = -math.log(math.e ** 2 / (2 * math.e ** 2 + math.e ** -2))
    assert catalogue_loss(q, TABLE, torch.tensor([0]), 0.5, torch.tensor([0.0, 2.0, 0.0])).item() == pytest.approx(expected, rel=1e-5)
    # the query's other gold item (1) is not a negative: [2, -inf, -2]
    expected = -math.log(math.e ** 2 / (math.e ** 2 + math.e ** -2))
    assert catalogue_loss(q, TABLE, torch.tensor([0]), 0.5, None, [[0, 1]]).item() == pytest.approx(expected, rel=1e-5)


def test_ranking_scores_and_recall_per_item_by_hand():
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    table = TABLE.numpy()
    scores = rank_scores(queries, table, np.array([0.0, 0.0, 3.0]))  # item 2 gets +3: first for both queries
    assert scores.tolist() == [[1.0, 0.0, 2.0], [0.0, 1.0, 3.0]]
    # query 0 gold {0}: rank 2; query 1 gold {1, 2}: ranks 2 and 1 -> recall@1 = 1/3, @2 = 1
    assert recall_per_item(scores, [[0], [1, 2]], ks=(1, 2)) == {"recall@1": pytest.approx(1 / 3), "recall@2": 1.0, "n": 3}


def test_item_corpus_with_a_bias_ranks_by_cosine_plus_bias():
    table = TABLE.numpy()
    plain = ItemCorpus(["a", "b", "c"], table)
    biased = ItemCorpus(["a", "b", "c"], table, np.array([0.0, 0.5, 3.0], dtype=np.float32))
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    assert plain.top(query, 3) == [["a", "b", "c"]]  # cos 1, 0, -1
    assert biased.top(query, 3) == [["c", "a", "b"]]  # 2, 1, 0.5


def test_auto_dtype_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert hardware.resolve_dtype("auto") == "float32" and hardware.resolve_dtype("bfloat16") == "bfloat16"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert hardware.resolve_dtype("auto") == "bfloat16"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert hardware.resolve_dtype("auto") == "bfloat16"


@pytest.mark.slow
def test_lora_on_the_top_layers_only(base_dir):
    lm = RetrievableLM.load(base_dir, device="cpu", trainable=True)
    n = lm.model.config.num_hidden_layers
    lm.attach_lora(LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"], layers=2))
    adapted = {int(name.split("layers.")[1].split(".")[0]) for name, p in lm.model.named_parameters() if p.requires_grad}
    assert adapted == {n - 2, n - 1}


def test_the_item_bias_can_start_at_the_log_training_count():
    items = {"toy": pd.DataFrame({"item_id": ["a", "b", "c"], "description": ["A", "B", "C"]})}
    pairs = pd.DataFrame({"dataset": "toy", "query": ["q"], "item_id": ["a"], "gold_item_ids": [["a"]]})
    table = np.eye(3, dtype=np.float32)
    counts = item_counts([["a", "b"], ["a"], ["z"]], ["a", "b", "c"])  # "z" is not in the corpus
    assert counts.tolist() == [2, 1, 0]
    start = np.log1p(counts)
    task = catalogue_tasks(pairs, items, {"toy": table}, item_bias=True, bias_init={"toy": start})[0]
    assert torch.allclose(task.bias.detach(), torch.tensor([math.log(3), math.log(2), 0.0]))
    assert catalogue_tasks(pairs, items, {"toy": table}, item_bias=True)[0].bias.abs().sum().item() == 0
    with pytest.raises(DataError, match="bias start has 2 values for 3 items"):
        catalogue_tasks(pairs, items, {"toy": table}, item_bias=True, bias_init={"toy": start[:2]})


def test_prior_sweep_by_hand():
    """Two queries, three items; Recall@2 (with @10, which three items always reach)."""
    scores = np.array([[3.0, 2.0, 1.0], [0.0, 2.0, 1.0]])
    prior = np.array([0.0, 0.0, 1.5])
    beta, tried, recall = prior_sweep(scores, prior, [[2], [0]], [0, 1, 2], k=2)
    # beta 0: both golds third; beta 1: q0's gold (3 vs 2.5 vs 2) second, q1's third; beta 2: q0's first, q1's third
    assert tried == {0: 0.5, 1: 0.75, 2: 0.75}
    assert beta == 1 and recall == {"recall@10": 1.0, "recall@2": 0.5, "n": 2}  # a tie goes to the smaller beta
    # n counts gold items, not contexts (the summary's "chosen on n validation gold items"): q1 with two golds counts
    # twice; at beta 0 only q1's item 1 is in a top 2
    _, _, recall = prior_sweep(scores, prior, [[2], [0, 1]], [0], k=2)
    assert recall == {"recall@10": 1.0, "recall@2": pytest.approx(1 / 3), "n": 3}


def toy_catalogue() -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Four items and four Conv2Item pairs, one query twice (two gold items)."""
    items = {"toy": pd.DataFrame({"item_id": ["a", "b", "c", "d"],
                                  "description": ["Alien (1979)", "Toy Story (1995)", "Heat (1995)", "Up (2009)"]})}
    pairs = pd.DataFrame({"dataset": "toy", "query": ["Seeker: space horror?", "Seeker: a cartoon", "Seeker: heist film", "Seeker: a cartoon"],
                          "item_id": ["a", "b", "c", "d"], "gold_item_ids": [["a"], ["b", "d"], ["c"], ["b", "d"]]})
    return items, pairs


@pytest.mark.slow
def test_catalogue_training_moves_the_bias_saves_it_and_validates(base_dir, tmp_path):
    items, pairs = toy_catalogue()
    lengths = Lengths(query=24, document=16, prompt=48, target=8)
    torch.manual_seed(0)
    lm = RetrievableLM.load(base_dir, device="cpu", trainable=True)
    table = lm.embed(items["toy"]["description"].tolist(), "x", max_length=16)
    tasks = catalogue_tasks(pairs, items, {"toy": table}, item_bias=True, item_offset=True)
    assert tasks[0].targets == [0, 1, 2, 3] and tasks[0].gold_rows[1] == [1, 3]
    lm.attach_lora(LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"], layers=3))
    objective = FinetuneObjective([], [GenerationTask("response", ["Say hi"], ["Hi!"])], 0, 1, 0.05, lengths,
                                  catalogue=tasks, catalogue_batch=4)
    turns = pairs.assign(instance_id=[f"t#{i}" for i in range(4)])
    validate = CatalogueValidation.build(turns, items, tasks, 0, 0, 0.05, 24, 16, 4, {"toy": np.log1p([3.0, 0, 1, 0])}, [0, 1])
    loop = TrainLoop(lm, TrainConfig(steps=3, lr=1e-3), objective, tmp_path / "work", extra_params=objective.extra_parameters(),
                     extra_lr={"toy": 0.05, "offset.toy": 0.01}, validate=validate, validate_every=2)
    loop.run()
    assert tasks[0].bias.abs().sum().item() > 0 and tasks[0].offset.abs().sum().item() > 0  # the item side learned
    rows = (tmp_path / "work/validation.csv").read_text().splitlines()
    assert rows[0] == "step,dataset,recall@10,recall@50,n,prior_beta,prior_recall@10,prior_recall@50"
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "2", "3"]
    # 4 items: every gold item is in any top 10, with or without the prior (a tie: the smaller beta)
    assert rows[-1].endswith(",1.000000,1.000000,6,0,1.000000,1.000000")
    # the passes after the first ran the 3 adapted layers on the 27 frozen layers' kept states: the same vectors
    assert validate._trunks["toy"].layers == 27
    np.testing.assert_array_equal(validate.query_vectors(lm, "toy"),
                                  lm.embed(pairs["query"].tolist(), templates.CONV2ITEM_QUERY,
                                           batch_size=4, max_length=24, truncation_side="left"))
    loop.finish(tmp_path / "model", tmp_path / "loss.csv", {}, "item_bias.safetensors", tmp_path / "validation.csv")
    saved = load_file(tmp_path / "model/item_bias.safetensors")
    assert torch.equal(saved["toy"], tasks[0].bias.detach()) and torch.equal(saved["offset.toy"], tasks[0].offset.detach())
    assert (tmp_path / "validation.csv").exists() and not (tmp_path / "work").exists()
    random.seed(0)


@pytest.mark.slow
def test_lora_init_is_drawn_from_the_seed(base_dir):
    def lora_a(seed):
        lm = RetrievableLM.load(base_dir, device="cpu", trainable=True)
        torch.rand(7)  # whatever the global RNG did before must not matter
        lm.attach_lora(LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"], layers=1), seed=seed)
        return torch.cat([p.detach().flatten() for n, p in lm.model.named_parameters() if "lora_A" in n])

    assert torch.equal(lora_a(3), lora_a(3)) and not torch.equal(lora_a(3), lora_a(4))


def test_a_missing_catalogue_pairs_table_names_the_stage_that_writes_it(tmp_path, monkeypatch):
    import stages.training as training
    monkeypatch.setattr(training, "ROOT", tmp_path)
    with pytest.raises(MissingArtifactError, match=r"catalogue_train\.parquet: no catalogue pairs; run `dvc repro build_instructions`"):
        training.read_catalogue_pairs()


def test_item_offsets_move_the_table_rows_and_are_scored_as_trained(tmp_path):
    """``item_offset``: a learned vector per item added to its table row, the row re-normalised; the loss sees the
    moved table (gradients reach the offsets), and trained_item_side gives the same table back to retrieval."""
    import json

    from safetensors.numpy import save_file

    from pipeline.training.catalogue import OFFSET, offset_table, trained_item_side
    from pipeline.training.objectives import catalogue_parameters

    items = {"toy": pd.DataFrame({"item_id": ["a", "b", "c"], "description": ["A", "B", "C"]})}
    pairs = pd.DataFrame({"dataset": "toy", "query": ["q"], "item_id": ["b"], "gold_item_ids": [["b"]]})
    task = catalogue_tasks(pairs, items, {"toy": TABLE.numpy()}, item_bias=False, item_offset=True)[0]
    assert torch.equal(task.scored_table(), TABLE)  # offsets start at 0: the table as it was
    assert list(catalogue_parameters([task])) == ["offset.toy"]
    assert catalogue_tasks(pairs, items, {"toy": TABLE.numpy()}, item_bias=False)[0].offset is None
    # q = (1, 0), target b = (0, 1): the loss pulls b's row toward q; one SGD step on the offsets lowers it
    q = torch.tensor([[1.0, 0.0]])
    loss = catalogue_loss(q, task.scored_table(), torch.tensor([1]), 1.0)
    loss.backward()
    assert task.offset.grad[1, 0] < 0  # descending moves b's first coordinate up, toward q
    with torch.no_grad():
        task.offset -= 0.5 * task.offset.grad
    assert catalogue_loss(q, task.scored_table(), torch.tensor([1]), 1.0) < loss
    # by hand: row b (0, 1) + offset (1, 0) = (1, 1) -> (0.7071, 0.7071); the others unchanged
    offset = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    moved = offset_table(TABLE.numpy(), offset)
    np.testing.assert_allclose(moved, [[1, 0], [0.70710677, 0.70710677], [-1, 0]], atol=1e-6)
    table = TABLE.numpy()
    assert offset_table(table, None) is table  # no offsets: the table itself
    np.testing.assert_allclose(torch.nn.functional.normalize(TABLE + torch.from_numpy(offset), dim=1), moved, atol=1e-6)
    (tmp_path / "reficr_adapter.json").write_text(json.dumps({"retrieval_objective": "catalogue", "temperature": 0.5}))
    save_file({OFFSET + "toy": offset}, str(tmp_path / "item_bias.safetensors"))
    table, bias = trained_item_side(tmp_path, "toy", TABLE.numpy())
    np.testing.assert_allclose(table, moved, atol=1e-6)
    assert bias is None  # offsets learned without a bias
    save_file({OFFSET + "toy": offset, "toy": np.array([0.0, 2.0, 0.0], dtype=np.float32)}, str(tmp_path / "item_bias.safetensors"))
    table, bias = trained_item_side(tmp_path, "toy", TABLE.numpy())
    np.testing.assert_allclose(table, moved, atol=1e-6)
    assert bias.tolist() == [0.0, 1.0, 0.0]  # temperature x bias
    save_file({OFFSET + "toy": offset[:2]}, str(tmp_path / "item_bias.safetensors"))
    with pytest.raises(DataError, match=r"expected item offsets of shape \(3, 2\) for 'toy', found \(2, 2\)"):
        trained_item_side(tmp_path, "toy", TABLE.numpy())


def test_extra_parameters_get_their_own_learning_rates_by_name(base_dir):
    """TrainLoop: ``extra_lr`` as one number for every extra parameter, or per name (the catalogue objective's
    biases at ``item_bias_lr``, offsets at ``item_offset_lr``): one optimizer group per learning rate."""
    from stages.training import extra_learning_rates

    lm = RetrievableLM.load(base_dir, device="cpu", trainable=True)
    lm.attach_lora(LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"], layers=1))
    extra = {"redial": torch.nn.Parameter(torch.zeros(3)), "offset.redial": torch.nn.Parameter(torch.zeros(3, 2)),
             "inspired": torch.nn.Parameter(torch.zeros(2))}
    lrs = extra_learning_rates({"item_bias_lr": 0.05, "item_offset_lr": 0.002}, extra)
    assert lrs == {"redial": 0.05, "offset.redial": 0.002, "inspired": 0.05}
    loop = TrainLoop(lm, TrainConfig(steps=1, lr=1e-3), lambda *_: None, "unused", extra_params=extra, extra_lr=lrs)
    groups = [(g["initial_lr"], [id(p) for p in g["params"]]) for g in loop.optimizer.param_groups]
    assert groups[1] == (0.05, [id(extra["redial"]), id(extra["inspired"])])
    assert groups[2] == (0.002, [id(extra["offset.redial"])])
    loop = TrainLoop(lm, TrainConfig(steps=1, lr=1e-3), lambda *_: None, "unused", extra_params=extra, extra_lr=0.05)
    assert len(loop.optimizer.param_groups) == 2 and loop.optimizer.param_groups[1]["initial_lr"] == 0.05


def _gold_log_likelihood(lm, task, queries, gold) -> float:
    """Mean log-probability of each query's gold items over the whole table (the catalogue objective's quantity)."""
    q = torch.from_numpy(lm.embed(queries, templates.CONV2ITEM_QUERY, max_length=24, truncation_side="left"))
    logp = torch.log_softmax(q @ task.table.T / 0.05 + task.bias.detach(), dim=1)
    return float(np.mean([logp[i, g].mean().item() for i, g in enumerate(gold)]))


@pytest.mark.slow
def test_a_trunk_pass_trains_the_adapter_layers_on_kept_trunk_states_and_generation_keeps_the_joint_adapter(base_dir, tmp_path):
    items, pairs = toy_catalogue()
    settings = PassSettings(passes=3, lr=1e-2, bias_lr=0.05, batch_size=2, temperature=0.05, query_length=24,
                            warmup_ratio=0.0, seed=0)

    def trained(passes: int):
        lm = RetrievableLM.load(base_dir, device="cpu", trainable=True)
        table = lm.embed(items["toy"]["description"].tolist(), "x", max_length=16)
        task = catalogue_tasks(pairs, items, {"toy": table}, item_bias=True)[0]
        lm.attach_lora(LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"], layers=3), seed=0)
        bottom = bottom_fingerprint(lm, 27)
        queries, gold = unique_queries(task)
        before = _gold_log_likelihood(lm, task, queries, gold)
        rows = trunk_pass(lm, [task], replace(settings, passes=passes))
        assert bottom_fingerprint(lm, 27) == bottom  # the frozen layers stay as they were
        return lm, task, rows, before, _gold_log_likelihood(lm, task, queries, gold)

    lm, task, rows, before, after = trained(3)
    # the duplicated query is one example with both gold items: 3 queries, batches of 2, 3 passes = 6 steps
    assert unique_queries(task) == (["Seeker: space horror?", "Seeker: a cartoon", "Seeker: heist film"], [[0], [1, 3], [2]])
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(math.isfinite(r["loss"]) for r in rows)
    assert after > before and task.bias.abs().sum().item() > 0  # the adapter and the item biases learned
    _, _, again, _, after_again = trained(3)
    assert again == rows and after_again == after  # seeded: the same steps, the same losses
    _, task0, none, before0, after0 = trained(0)
    assert none == [] and after0 == before0 and task0.bias.abs().sum().item() == 0  # 0 passes train nothing
    with pytest.raises(ValueError, match="frozen bottom layers"):
        full = RetrievableLM.load(base_dir, device="cpu", trainable=True)
        full.attach_lora(LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=["q_proj"], layers=0), seed=0)
        trunk_pass(full, [task], settings)
    # the loop records the steps after its own: loss rows continue the step count, a validation pass follows
    objective = FinetuneObjective([], [GenerationTask("response", ["Say hi"], ["Hi!"])], 0, 1, 0.05,
                                  Lengths(query=24, document=16, prompt=48, target=8))
    loop = TrainLoop(lm, TrainConfig(steps=1, lr=1e-3), objective, tmp_path / "work",
                     validate=lambda _: [{"dataset": "toy", "recall@10": 1.0}], validate_every=1)
    loop.run()
    joint = {k: v.detach().clone() for k, v in get_peft_model_state_dict(lm.model).items()}
    loop.snapshot(GENERATION_ADAPTER, {"role": "generation"})  # as finetune keeps the joint steps' adapter
    rows = trunk_pass(lm, [task], settings)
    loop.add_steps(rows)
    losses = (tmp_path / "work/loss.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in losses[1:]] == ["1", "2", "3", "4", "5", "6", "7"]
    assert losses[2].split(",")[1] == f"{rows[0]['loss']:.6f}" and losses[2].split(",")[3] == "0.000000"
    assert [r.split(",")[0] for r in (tmp_path / "work/validation.csv").read_text().splitlines()[1:]] == ["0", "1", "7"]
    # the adapter after the pass is the model's; the one before it, its generation adapter
    passed = {k: v.detach().clone() for k, v in get_peft_model_state_dict(lm.model).items()}
    loop.finish(tmp_path / "model", tmp_path / "loss.csv", {"stage": "toy"})
    assert generation_adapter(tmp_path / "model") == tmp_path / "model" / GENERATION_ADAPTER
    for folder, want in ((tmp_path / "model", passed), (tmp_path / "model" / GENERATION_ADAPTER, joint)):
        saved = load_file(folder / "adapter_model.safetensors")
        assert saved.keys() == want.keys() and all(torch.equal(saved[k], want[k]) for k in want)
    assert any(not torch.equal(joint[k], passed[k]) for k in joint)
    embedding, generating = CPU.load_tuned(base_dir, tmp_path / "model")
    assert generating is not embedding
    text = ["Seeker: a heist film"]
    assert not np.allclose(embedding.embed(text, "x"), generating.embed(text, "x"))  # two models: the pass moved one
    assert np.allclose(generating.embed(text, "x"), CPU.load(base_dir, adapter=tmp_path / "model" / GENERATION_ADAPTER,
                                                             merge=True).embed(text, "x"))
    shutil.rmtree(tmp_path / "model" / GENERATION_ADAPTER)  # a run without the pass: one model does both
    assert generation_adapter(tmp_path / "model") == tmp_path / "model"
    embedding, generating = CPU.load_tuned(base_dir, tmp_path / "model")
    assert generating is embedding
