"""The retrievable LM: one set of weights that embeds (bidirectional) and generates (causal).

Formats (GritLM's):

- embedding: ``<|user|>\\n{instruction}\\n<|embed|>\\n{text}`` (no instruction: ``<|embed|>\\n{text}``);
  attention is **bidirectional** (``is_causal=False``), the embedding is the mean of the **last hidden
  states** over the text tokens only (instruction tokens and padding are left out of the mean; they
  still shape the text tokens' states through attention), L2-normalised. Never logits.
- generation: ``<|user|>\\n{prompt}\\n<|assistant|>\\n`` then the response and the EOS token; causal.

The prefix and the text are tokenized separately and concatenated, so the text tokens are exactly the
tokens the text gets alone, and the pooling mask is exact.

    lm = RetrievableLM.load("models/base")
    vecs = lm.embed(["I loved Alien (1979)"], instruction="Retrieve relevant items ...")
    lm.generate(["Recommend a movie like Alien (1979)."], max_new_tokens=32)
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline.errors import CudaRequiredError, ParamError
from pipeline.model.base_model import MANIFEST, weights_hash

log = logging.getLogger(__name__)

USER, EMBED, ASSISTANT = "<|user|>", "<|embed|>", "<|assistant|>"
ADAPTER_MANIFEST = "reficr_adapter.json"


def embed_prefix(instruction: str) -> str:
    return f"{USER}\n{instruction}\n{EMBED}\n" if instruction else f"{EMBED}\n"


def generation_prefix(prompt: str) -> str:
    return f"{USER}\n{prompt}\n{ASSISTANT}\n"


@dataclass(kw_only=True)
class LoraSettings:
    """LoRA hyper-parameters. Paper (GritLM-7B): r=64, alpha=16, dropout 0.05 on every projection."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    layers: int | None = None  # adapt only the top N decoder layers (those below then need no backward); None: all


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CudaRequiredError(
            f"device={device!r} was requested but this machine has no CUDA device; "
            "use a CPU profile (e.g. model.preset=small) or run on a GPU machine"
        )
    return torch.device(device)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def mean_pool(hidden: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """The L2-normalised mean of ``hidden`` over the positions ``pool`` marks (float32)."""
    pool = pool.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize(((hidden * pool).sum(dim=1) / pool.sum(dim=1).clamp(min=1.0)).float(), dim=-1)


class RetrievableLM:
    """A Hugging Face causal LM + tokenizer that embeds, generates and scores."""

    def __init__(self, model, tokenizer, base_path: str | Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.base_path = Path(base_path) if base_path else None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._prefix_cache: dict[str, list[int]] = {}
        self.merged = False  # an adapter was merged into the weights (``merge``)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        adapter: str | Path | None = None,
        device: str = "auto",
        dtype: str = "float32",
        quantization: str | None = None,
        merge: bool = False,
        trainable: bool = False,
        inference_dtype: str | None = None,
    ) -> "RetrievableLM":
        """Load a base model folder, optionally 4-bit (``quantization="nf4"``) and with a LoRA adapter.

        nf4 uses double quantization and ``dtype`` as compute dtype (QLoRA). bitsandbytes 0.50 also runs
        4-bit layers on the CPU (slowly), which is what the tests use; ``device="cuda"`` without CUDA is
        an error, never a silent fallback. ``inference_dtype`` (not when ``trainable`` or 4-bit): weights are
        loaded in ``dtype``, the adapter merged, then everything cast (see ``cast``).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        target = resolve_device(device)
        if dtype not in DTYPES:
            raise ParamError(f"model.dtype: {dtype!r}; expected one of {sorted(DTYPES)}")
        kwargs: dict = {"dtype": DTYPES[dtype]}
        if quantization:
            if quantization != "nf4":
                raise ParamError(f"model.quantization: {quantization!r}; expected 'nf4' or none")
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=DTYPES[dtype],
            )
            kwargs["device_map"] = {"": target.index or 0} if target.type == "cuda" else {"": "cpu"}
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if not quantization:
            model.to(target)
        if quantization and trainable:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        lm = cls(model, tokenizer, base_path=path)
        if adapter:
            lm.load_adapter(adapter, trainable=trainable)
            if merge:
                lm.merge()
        if inference_dtype and inference_dtype != dtype and not trainable and not quantization:
            lm.cast(inference_dtype)  # after the merge: the LoRA update is added in full precision
        lm.model.train(trainable)
        return lm

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def decoder(self):
        """The transformer body (no LM head), through any PEFT wrapper: hidden states, never logits."""
        model = self.model
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        return model.get_decoder() if hasattr(model, "get_decoder") else model.model

    # ------------------------------------------------------------------ LoRA
    def attach_lora(self, settings: LoraSettings, seed: int | None = None) -> None:
        """LoRA adapters on the base model; their random init is drawn from ``seed`` (else the global RNG)."""
        from peft import LoraConfig, get_peft_model

        n = self.model.config.num_hidden_layers
        config = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=list(settings.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
            layers_to_transform=list(range(max(0, n - settings.layers), n)) if settings.layers else None,
        )
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.model = get_peft_model(self.model, config)
        self.lora = settings

    def save_adapter(self, out_dir: str | Path, extra: dict | None = None) -> None:
        """Adapter (safetensors) + tokenizer + a manifest naming the base model and its weights' hash."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        manifest = {"base_model": str(self.base_path) if self.base_path else None}
        if self.base_path and (self.base_path / MANIFEST).exists():
            manifest["base_manifest"] = json.loads((self.base_path / MANIFEST).read_text())
            manifest["base_weights_sha256"] = manifest["base_manifest"]["weights_sha256"]
        elif self.base_path:
            manifest["base_weights_sha256"] = weights_hash(self.base_path)
        if getattr(self, "lora", None):
            manifest["lora"] = asdict(self.lora)
        manifest.update(extra or {})
        (out / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    def load_adapter(self, adapter_dir: str | Path, trainable: bool = False) -> None:
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        manifest_path = adapter_dir / ADAPTER_MANIFEST
        if manifest_path.exists() and self.base_path is not None:
            want = json.loads(manifest_path.read_text()).get("base_weights_sha256")
            have_manifest = self.base_path / MANIFEST
            have = (json.loads(have_manifest.read_text())["weights_sha256"] if have_manifest.exists()
                    else weights_hash(self.base_path))
            if want and want != have:
                raise ParamError(
                    f"{adapter_dir}: adapter was trained on base weights {want[:12]}..., "
                    f"but {self.base_path} holds {have[:12]}...; load the base model it was trained on"
                )
        self.model = PeftModel.from_pretrained(self.model, adapter_dir, is_trainable=trainable)

    def merge(self) -> None:
        """Fold the LoRA weights into the base weights (faster inference; no more adapter)."""
        self.model = self.model.merge_and_unload()
        self.merged = True

    def cast(self, dtype: str) -> None:
        """Cast every weight to ``dtype`` for inference (e.g. bfloat16: ~3x faster embedding on CPUs with
        AMX/AVX512-BF16, mean cosine to float32 0.9997, see bench/README.md). Merge an adapter *before*
        casting, so that the LoRA update is added in full precision. Not for 4-bit models."""
        if dtype not in DTYPES:
            raise ParamError(f"model.dtype: {dtype!r}; expected one of {sorted(DTYPES)}")
        if getattr(self.model, "is_loaded_in_4bit", False):
            raise ParamError("model.inference_dtype: a 4-bit model cannot be cast; expected inference_dtype auto (its "
                             "compute dtype is set when loading)")
        self.model.to(DTYPES[dtype])

    # ------------------------------------------------------------------ embedding
    def _prefix_ids(self, prefix: str) -> list[int]:
        if prefix not in self._prefix_cache:
            self._prefix_cache[prefix] = self.tokenizer(prefix, add_special_tokens=True)["input_ids"]
        return self._prefix_cache[prefix]

    def tokenize_for_embedding(
        self, texts: Sequence[str], instruction: str, max_length: int, truncation_side: str = "right"
    ) -> list[tuple[list[int], int]]:
        """(input ids, number of prefix tokens) per text. ``max_length`` caps the *text* tokens;
        ``truncation_side="left"`` keeps the end (the most recent part of a conversation)."""
        prefix = self._prefix_ids(embed_prefix(instruction))
        out = []
        for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
            if len(ids) > max_length:
                ids = ids[-max_length:] if truncation_side == "left" else ids[:max_length]
            if not ids:  # an empty text still needs one token to pool: the instruction's last
                out.append((prefix, len(prefix) - 1))
            else:
                out.append((prefix + ids, len(prefix)))
        return out

    def pad(self, sequences: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id rows padded to the longest (on the ``side`` given) and their attention mask, on the model's device."""
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            if side == "right":
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            else:
                ids[row, width - len(seq):] = torch.tensor(seq)
                mask[row, width - len(seq):] = 1
        return ids.to(self.device), mask.to(self.device)

    def embedding_batch(self, batch: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, attention mask and pooling mask (text tokens only) of one tokenized batch."""
        ids, mask = self.pad([seq for seq, _ in batch], side="right")
        pool = mask.clone()
        for row, (_, n_prefix) in enumerate(batch):
            pool[row, :n_prefix] = 0
        return ids, mask, pool

    def encode(self, batch: list[tuple[list[int], int]]) -> torch.Tensor:
        """Pooled, L2-normalised embeddings of one tokenized batch, with gradients when training."""
        ids, mask, pool = self.embedding_batch(batch)
        hidden = self.decoder()(input_ids=ids, attention_mask=mask, is_causal=False).last_hidden_state
        return mean_pool(hidden, pool)

    def embedding_batches(self, tokenized: list[tuple[list[int], int]], batch_size: int, sort_by_length: bool) -> list[list[int]]:
        """Rows of each batch: length-sorted (less padding), longest first."""
        order = sorted(range(len(tokenized)), key=lambda i: -len(tokenized[i][0])) if sort_by_length else list(range(len(tokenized)))
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]

    @torch.no_grad()
    def embed(self, texts: Sequence[str], instruction: str = "", *, batch_size: int = 16, max_length: int = 256,
              truncation_side: str = "right", sort_by_length: bool = True, progress: bool | None = None) -> np.ndarray:
        """float32 (n, d) L2-normalised embeddings in the order of ``texts``, batched from length-sorted texts (less
        padding; ``pipeline.model.trunk`` runs them in two parts); ``progress`` shows a bar (default: over 10 batches)."""
        if len(texts) == 0:
            return np.zeros((0, self.hidden_size), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        tokenized = self.tokenize_for_embedding(texts, instruction, max_length, truncation_side)
        out = np.zeros((len(texts), self.hidden_size), dtype=np.float32)
        batches = self.embedding_batches(tokenized, batch_size, sort_by_length)
        show = progress if progress is not None else len(batches) > 10
        for chunk in tqdm(batches, desc="embed", unit="batch", disable=not show):
            vectors = self.encode([tokenized[i] for i in chunk])
            out[chunk] = vectors.cpu().numpy()
        self.model.train(was_training)
        return out

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        return getattr(config, "hidden_size", None) or config.get_text_config().hidden_size

    # ------------------------------------------------------------------ generation & scoring
    def tokenize_pairs(
        self, prompts: Sequence[str], targets: Sequence[str], max_prompt_length: int, max_target_length: int,
        eos: bool = True,
    ) -> list[tuple[list[int], int]]:
        """(prompt ids + target ids + EOS (unless ``eos`` is False), number of prompt tokens). The prompt keeps
        its *end* when cut (the formatted prompt's last tokens are the assistant marker), the target its beginning."""
        end = [self.tokenizer.eos_token_id] if eos else []
        prompt_ids = self.tokenizer([generation_prefix(p) for p in prompts], add_special_tokens=True)["input_ids"]
        target_ids = self.tokenizer(list(targets), add_special_tokens=False)["input_ids"]
        out = []
        for p, t in zip(prompt_ids, target_ids):
            p = p[-max_prompt_length:]
            t = t[:max_target_length] + end
            out.append((p + t, len(p)))
        return out

    def target_logprobs(self, batch: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position log-probabilities of the target tokens and their mask (batch, length - 1)."""
        ids, mask = self.pad([seq for seq, _ in batch], side="right")
        labels_mask = mask.clone()
        for row, (_, n_prompt) in enumerate(batch):
            labels_mask[row, :n_prompt] = 0
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return logprobs, labels_mask[:, 1:].to(logprobs.dtype)

    def lm_loss(self, batch: list[tuple[list[int], int]]) -> torch.Tensor:
        """Mean next-token cross-entropy over all target tokens of the batch (Eq. 6, token-averaged)."""
        logprobs, mask = self.target_logprobs(batch)
        return -(logprobs * mask).sum() / mask.sum().clamp(min=1.0)

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[str],
        targets: Sequence[str],
        *,
        batch_size: int = 8,
        max_prompt_length: int = 1024,
        max_target_length: int = 256,
    ) -> list[np.ndarray]:
        """Per-token log-likelihoods of each target (its tokens, then EOS) given its prompt."""
        was_training = self.model.training
        self.model.eval()
        pairs = self.tokenize_pairs(prompts, targets, max_prompt_length, max_target_length)
        out: list[np.ndarray] = []
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start: start + batch_size]
            logprobs, mask = self.target_logprobs(batch)
            for row in range(len(batch)):
                out.append(logprobs[row][mask[row].bool()].cpu().numpy().astype(np.float64))
        self.model.train(was_training)
        return out

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 128,
        *,
        batch_size: int = 8,
        max_prompt_length: int = 1024,
        progress: bool | None = None,
        starts: Sequence[str] | None = None,
    ) -> list[str]:
        """Greedy generation, batched with left padding; stops at EOS. Returns the new text only. ``starts``: text per
        prompt the output must begin with (tokens after the cut prompt, as ``tokenize_pairs``), continued, not returned."""
        was_training = self.model.training
        self.model.eval()
        encoded = self.tokenizer([generation_prefix(p) for p in prompts], add_special_tokens=True)["input_ids"]
        encoded = [ids[-max_prompt_length:] for ids in encoded]
        if starts is not None:
            encoded = [ids + s for ids, s in zip(encoded, self.tokenizer(list(starts), add_special_tokens=False)["input_ids"])]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        results: list[str] = [""] * len(prompts)
        batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        show = progress if progress is not None else len(batches) > 10
        for chunk in tqdm(batches, desc="generate", unit="batch", disable=not show):
            ids, mask = self.pad([encoded[i] for i in chunk], side="left")
            output = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                         eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
            for row, index in enumerate(chunk):
                results[index] = self.tokenizer.decode(output[row, ids.shape[1]:], skip_special_tokens=True).strip()
        self.model.train(was_training)
        return results
