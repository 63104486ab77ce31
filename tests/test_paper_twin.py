"""The paper's profile (profiles/gritlm-7b.yaml) and the GPU profile (profiles/small-gpu.yaml) as miniature twins,
through `dvc repro` to `summarize` on the committed slices (torchtune-style: every recipe runs on a tiny config).

A twin keeps every setting of its profile that selects a code path: the retrieval objectives, `negatives`, item
offsets on or off, the DM prior (no head in the paper's profile), QLoRA nf4 with double quantization, bf16 compute
and mixed precision, gradient checkpointing, LoRA's r/alpha/targets/layers. Only sizes shrink (to the tiny profile's:
steps, batches, lengths, caps, samples, grids), and the paper's GritLM-7B becomes a random-initialised Mistral of
the same settings at two layers and width 128 (``pipeline.model.architectures``), with the small model's tokenizer.

CUDA-only settings get the CPU stand-in the code already has: ``model.device: cuda`` -> ``cpu`` (bitsandbytes runs
4-bit layers on the CPU; accelerate's bf16 autocast runs on the CPU), ``mining.use_gpu: true`` -> ``false``
(faiss-gpu needs CUDA). Nothing else changes.
"""

from __future__ import annotations

import copy
import json
import random

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open

from pipeline.evaluation.protocol import SYSTEM_NAMES
from pipeline.model.architectures import GRITLM_7B, miniature, random_model
from pipeline.model.lm import RetrievableLM
from pipeline.model.settings import Lengths
from pipeline.training.objectives import FinetuneObjective, finetune_tasks
from stages.settings import model_settings
from tests.conftest import ROOT, build_run

pytestmark = pytest.mark.slow

# the keys a twin takes from the tiny profile: sizes, never a code path
SIZES = ("lengths", "embed", "instructions", "warmup.steps", "warmup.batch_size", "warmup.catalogue_batch",
         "warmup.save_every", "mining.pool", "finetune.steps", "finetune.retrieval_batch", "finetune.generation_batch",
         "finetune.catalogue_batch", "finetune.save_every", "finetune.validation_queries",
         "item_offsets.batch_size", "knowledge.text_neighbours", "knowledge.encoder_neighbours", "knowledge.weight_step",
         "eval.max_retrieval", "eval.max_generation", "eval.max_responses", "eval.max_dm", "eval.max_dm_generation",
         "eval.dm_validation.max_turns", "eval.dm_validation.fraction", "eval.dm_validation.weights", "eval.max_validation",
         "eval.bootstrap", "eval.generation_batch", "eval.max_new_tokens_ranking", "eval.max_new_tokens_response",
         "eval.max_new_tokens_dm")
CPU_STAND_INS = {"model.device": "cpu", "mining.use_gpu": False}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def get(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def put(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree[part]
    tree[last] = copy.deepcopy(value)


def twin_params(name: str) -> dict:
    """Profile ``name`` with the tiny profile's sizes and the CPU stand-ins."""
    profile = yaml.safe_load((ROOT / f"profiles/{name}.yaml").read_text())
    tiny = yaml.safe_load((ROOT / "profiles/tiny.yaml").read_text())
    twin = copy.deepcopy(profile)
    for key in SIZES:
        put(twin, key, get(tiny, key))
    for key, value in CPU_STAND_INS.items():
        put(twin, key, value)
    if profile["finetune"]["validate_every"]:  # validation passes on: one at the end of the twin's steps
        twin["finetune"]["validate_every"] = twin["finetune"]["steps"]
    twin["data"]["manifest"] = "tests/fixtures/raw/manifest.json"
    return twin


@pytest.fixture(scope="module")
def gritlm_twin(tmp_path_factory, base_dir):
    folder = tmp_path_factory.mktemp("gritlm-mini") / "model"
    random_model(miniature(GRITLM_7B), base_dir, folder)
    params = twin_params("gritlm-7b")
    params["model"]["path"] = str(folder)
    return build_run(tmp_path_factory, "gritlm-7b-twin", params)


@pytest.fixture(scope="module")
def small_gpu_twin(tmp_path_factory):
    return build_run(tmp_path_factory, "small-gpu-twin", twin_params("small-gpu"))


def test_the_twins_keep_every_code_path_setting_of_their_profile():
    for name in ("gritlm-7b", "small-gpu"):
        profile = yaml.safe_load((ROOT / f"profiles/{name}.yaml").read_text())
        twin = twin_params(name)
        changed = {k for k in flat(profile) if flat(profile)[k] != flat(twin)[k]}
        allowed = set(CPU_STAND_INS) | {"data.manifest", "finetune.validate_every"}
        assert all(any(k == s or k.startswith(s + ".") for s in SIZES) or k in allowed for k in changed), changed
    code_paths = ("negatives", "model.preset", "model.dtype", "model.quantization", "model.mixed_precision",
                  "model.inference_dtype", "model.lora", "warmup.retrieval_objective", "warmup.gradient_checkpointing",
                  "warmup.item_bias", "finetune.retrieval_objective", "finetune.in_batch_negatives", "finetune.item_bias",
                  "finetune.item_offset", "finetune.item_table", "finetune.gradient_checkpointing",
                  "finetune.generation_weights", "mining.index", "mining.conv_aggregation", "mining.exclude_context_items",
                  "item_offsets.fit", "eval.dm_validation.head_l2", "eval.prior_betas", "ranking.candidates")
    for name in ("gritlm-7b", "small-gpu"):  # a size list that swallowed one of these would change the path
        profile, twin = yaml.safe_load((ROOT / f"profiles/{name}.yaml").read_text()), twin_params(name)
        assert all(get(profile, key) == get(twin, key) for key in code_paths), name
        assert not any(key == size or key.startswith(size + ".") for key in code_paths for size in SIZES)
    paper = twin_params("gritlm-7b")
    assert (paper["model"]["quantization"], paper["model"]["dtype"], paper["model"]["mixed_precision"]) == ("nf4", "bfloat16", "bf16")
    assert (paper["finetune"]["retrieval_objective"], paper["warmup"]["retrieval_objective"]) == ("mined", "in_batch")
    assert paper["negatives"] == 9 and not paper["item_offsets"]["fit"] and paper["eval"]["dm_validation"]["head_l2"] == []


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def test_gritlm_twin_runs_the_papers_path_to_summarize(gritlm_twin):
    repo, params = gritlm_twin.repo, gritlm_twin.params
    k = params["negatives"]
    mined = pd.read_parquet(repo / "data/negatives/conv2item.parquet")
    assert len(mined) and all(len(n) == k for n in mined["negatives"])  # Eq. 2: k mined negatives per query
    conv = pd.read_parquet(repo / "data/negatives/conv2conv.parquet")
    assert len(conv) and all(len(n) == k for n in conv["negatives"])  # Eq. 3
    # QLoRA: the adapter covers every projection of every layer with the paper's r and alpha
    config = json.loads((repo / "models/reficr/adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (64, 16) and set(config["target_modules"]) == set(LORA_TARGETS)
    with safe_open(repo / "models/reficr/adapter_model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    layers = miniature(GRITLM_7B)["num_hidden_layers"]
    for layer in range(layers):
        for module in LORA_TARGETS:
            assert any(f"layers.{layer}." in key and f".{module}.lora_A" in key for key in keys), (layer, module)
    manifest = json.loads((repo / "models/reficr/reficr_adapter.json").read_text())
    assert (manifest["retrieval_objective"], manifest["negatives"], manifest["lora"]["layers"]) == ("mined", 9, None)
    # the stages load the base model as the profile says: 4-bit nf4 layers, double quantization, bf16 compute
    import bitsandbytes as bnb

    lm = model_settings(params).load(repo / "models/base", trainable=True)
    quantized = [m for m in lm.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 7 * layers
    assert all(m.weight.quant_type == "nf4" and m.weight.compress_statistics and m.compute_dtype == torch.bfloat16
               for m in quantized)
    for dataset in ("redial", "inspired"):
        metrics = json.loads((repo / f"metrics/{dataset}.json").read_text())
        for system in SYSTEM_NAMES:
            assert f"{system}.dedup.recall@10.per_item" in metrics or f"{system}.full.recall@10.per_item" in metrics, system
        offsets = json.loads((repo / f"metrics/item_offsets_{dataset}.json").read_text())
        assert offsets["fitted"] is False  # item_offsets.fit: false
    redial = json.loads((repo / "metrics/redial.json").read_text())
    assert 0 <= redial["dm.free_generation.parse_rate"] <= 1  # the paper's DM: free generation, parsed
    assert json.loads((repo / "metrics/dm_validation.json").read_text())["prior"] == "shares"  # no DM head
    assert (repo / "metrics/summary.md").read_text().startswith("# reficr evaluation summary")


def test_gritlm_twin_objective_is_eq_4_5_with_in_batch_negatives(gritlm_twin):
    """The loss fine-tuning optimises, on the twin's own mined batches, equals Eq. 4-5 worked out here: each query's
    positive is the first document of its group among every document of the batch (other queries' documents that
    share its gold items left out). A broken target, group layout or mask in the real path fails this."""
    repo, params = gritlm_twin.repo, gritlm_twin.params
    frames = [pd.read_parquet(repo / p) for p in ("data/negatives/conv2item.parquet", "data/negatives/conv2conv.parquet",
                                                 "data/negatives/ranking_train.parquet",
                                                 "data/instructions/dm_train.parquet",
                                                 "data/instructions/response_train.parquet")]
    retrieval, _ = finetune_tasks(*frames, weights=params["finetune"]["generation_weights"])
    lengths = Lengths(**params["lengths"])
    lm = RetrievableLM.load(repo / "models/base", device="cpu", dtype="float32")
    lm.model.eval()
    t, batch = params["finetune"]["temperature"], 3
    objective = FinetuneObjective(retrieval, [], retrieval_batch=batch, generation_batch=0, temperature=t,
                                  lengths=lengths, in_batch_negatives=True)
    with torch.no_grad():
        real = objective(lm, random.Random(7)).loss_cl
        rng, by_hand = random.Random(7), []
        for task in retrieval:
            idx = rng.sample(range(len(task)), min(batch, len(task)))
            q = torch.from_numpy(lm.embed([task.queries[i] for i in idx], task.query_instruction, max_length=lengths.query,
                                          truncation_side="left"))
            docs = [(text, key) for i in idx for text, key in zip(task.docs[i], task.doc_keys[i])]
            d = torch.from_numpy(lm.embed([text for text, _ in docs], task.doc_instruction, max_length=lengths.document,
                                          truncation_side=task.doc_truncation, sort_by_length=False))
            group, losses = len(task.docs[idx[0]]), []
            for row, i in enumerate(idx):
                keep = [j for j, (_, key) in enumerate(docs) if j == row * group or not (key & task.query_gold[i])]
                logits = (q[row] @ d[keep].T) / t
                losses.append(-F.log_softmax(logits, dim=0)[keep.index(row * group)])
            by_hand.append(torch.stack(losses).mean())
    assert float(real) == pytest.approx(float(torch.stack(by_hand).mean()), abs=2e-4)


def test_small_gpu_twin_runs_its_path_to_summarize(small_gpu_twin):
    repo, params = small_gpu_twin.repo, small_gpu_twin.params
    assert params["finetune"]["retrieval_objective"] == "catalogue" and params["model"]["dtype"] == "bfloat16"
    assert (repo / "models/reficr/item_bias.safetensors").exists()  # the catalogue objective's learned item bias
    curve = pd.read_csv(repo / "plots/finetune_validation.csv")  # its validation pass ran
    assert set(curve.dataset) == {"redial", "inspired"} and curve.step.max() == params["finetune"]["steps"]
    config = json.loads((repo / "models/reficr/adapter_config.json").read_text())
    assert config["layers_to_transform"] is None  # layers: all
    for dataset in ("redial", "inspired"):
        metrics = json.loads((repo / f"metrics/{dataset}.json").read_text())
        assert "retrieval+knowledge.dedup.recall@50.per_item" in metrics
        assert json.loads((repo / f"metrics/item_offsets_{dataset}.json").read_text())["fitted"] is True  # fit: true
    assert (repo / "metrics/summary.md").exists()
