"""Settings records that cross module boundaries, and how a fine-tuned run's adapters are loaded by them. Stages
build them from params.yaml (``stages/settings.py``); the library takes them and never reads params.yaml. No
defaults: every value comes from a profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.hardware import resolve_dtype
from pipeline.model.lm import RetrievableLM, resolve_device

# a fine-tuned adapter folder may hold, here, the adapter that generates when training went on for retrieval alone
# (``finetune.trunk_pass``): the folder's own adapter embeds, this one ranks, manages the dialogue and replies
GENERATION_ADAPTER = "generation"


def generation_adapter(adapter_dir: str | Path) -> Path:
    """The adapter that generates for the fine-tuned adapter in ``adapter_dir``: its ``GENERATION_ADAPTER``
    subfolder where training wrote one, else the folder's own."""
    own = Path(adapter_dir) / GENERATION_ADAPTER
    return own if (own / "adapter_config.json").is_file() else Path(adapter_dir)


@dataclass(frozen=True, kw_only=True)
class Lengths:
    """Token caps (``lengths.*``)."""

    query: int  # a conversation as query or document (its most recent part is kept)
    document: int  # an item description (its start is kept)
    prompt: int  # a generation prompt (its end is kept)
    target: int  # a generation target


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """How the base model is loaded (``model.*`` but LoRA and the preset)."""

    device: str  # auto | cpu | cuda
    dtype: str  # frozen base weights / compute dtype in training (LoRA weights stay float32); auto: see hardware
    quantization: str | None  # None | nf4
    inference_dtype: str  # cast after merging the adapter, when the model only infers; auto: see hardware

    def load(self, base: str | Path, adapter: str | Path | None = None, trainable: bool = False,
             merge: bool = False) -> RetrievableLM:
        """The base model (+ adapter). Training keeps ``dtype``; inference (not ``trainable``) then casts to
        ``inference_dtype``, after any merge, unless the model is 4-bit."""
        device = resolve_device(self.device).type
        return RetrievableLM.load(base, adapter=adapter, device=self.device, dtype=resolve_dtype(self.dtype, device),
                                  quantization=self.quantization or None, trainable=trainable, merge=merge,
                                  inference_dtype=resolve_dtype(self.inference_dtype, device))

    def load_tuned(self, base: str | Path, adapter: str | Path) -> tuple[RetrievableLM, RetrievableLM]:
        """A fine-tuned model for inference (merged) as the model that embeds and the one that generates: the same
        model twice, or two where ``adapter`` keeps a separate generation adapter (``generation_adapter``)."""
        embedding = self.load(base, adapter=adapter, merge=True)
        generating = generation_adapter(adapter)
        if generating == Path(adapter):
            return embedding, embedding
        return embedding, self.load(base, adapter=generating, merge=True)


@dataclass(frozen=True, kw_only=True)
class RecommenderSettings:
    """How the ReFICR workflow runs at a turn (``pipeline.workflow.reficr.ReFICR``); evaluation uses the same."""

    candidates: int  # N: retrieved candidates the LLM ranks (ranking.candidates)
    knowledge_utterances: int  # last utterances of the similar conversation shown as knowledge
    top_k: int  # length of the retrieval list (eval.top_k)
    items_in_response: int  # ranked items a chat response names (ranking.items_in_response)
    query_length: int
    document_length: int
    prompt_length: int
    context_max_utterances: int  # a conversation keeps its most recent utterances ...
    context_max_chars: int  # ... and at most this many characters of them
    embed_batch: int
    generation_batch: int
    max_new_tokens_dm: int
    max_new_tokens_ranking: int
    max_new_tokens_response: int
    # the action sequences dialogue management chooses among (``pipeline.workflow.dialogue.dm_choices``; empty: each
    # single action), their log training shares (empty: uniform) and the weight of the model's calibrated evidence
    # against that prior (``dm_decide``), chosen on validation dialogues (stage validate_dm); 0, the prior alone,
    # where none was chosen (a run saved before validate_dm existed)
    dm_choices: list[list[str]] = field(default_factory=list)
    dm_log_prior: list[float] = field(default_factory=list)
    dm_weight: float = 0.0
    # the DM head (``pipeline.workflow.dialogue.DMHead`` as a dict), when validation chose it as the prior instead of the
    # training shares: a per-turn log prior over the same choices (empty: the shares)
    dm_head: dict = field(default_factory=dict)
