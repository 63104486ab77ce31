"""The schema of ``params.yaml`` (and of every profile in ``profiles/``): each key, its type, what it allows and
what it does, in one place. ``validate`` runs when a stage starts, before any work: a wrong value, a missing key or
an unknown key is one ``ParamError`` line naming the key, the value and what is allowed (exit 2). The stages then
read the plain dict as before; the schema changes no value.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
    model_validator,
)

from pipeline.errors import ParamError

Count = Annotated[StrictInt, Field(ge=0)]  # 0 usually means "all" or "none": said per key
Positive = Annotated[StrictInt, Field(ge=1)]
Rate = Annotated[StrictFloat | StrictInt, Field(gt=0)]
Fraction = Annotated[StrictFloat | StrictInt, Field(gt=0, lt=1)]
Weight = Annotated[StrictFloat | StrictInt, Field(ge=0)]
Dataset = Literal["redial", "inspired", "iard"]
DType = Literal["float32", "bfloat16"]
ItemInit = Literal["zero", "log_count"]
ItemTable = Literal["base", "centered"]
Modules = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PerDataset(Section):
    redial: Count
    inspired: Count


class RedialData(Section):
    valid_fraction: Fraction = Field(description="share of ReDial train dialogues held out as validation")


class IardData(Section):
    heldout_fraction: Fraction = Field(description="share of IARD dialogues held out for dialogue management's test")


class Data(Section):
    datasets: list[Dataset] = Field(min_length=1, description="what `download` fetches")
    download_timeout_s: Annotated[StrictInt, Field(ge=1)]
    manifest: str = Field(description='"" = the official files; else the path of a JSON manifest')
    redial: RedialData
    iard: IardData
    max_utterance_chars: Positive
    max_record_chars: Positive


class Lora(Section):
    r: Positive
    alpha: Positive
    dropout: Annotated[StrictFloat | StrictInt, Field(ge=0, lt=1)]
    target_modules: list[Modules] = Field(min_length=1)
    layers: Literal["all"] | Positive = Field(description='"all" or N: LoRA on the top N decoder layers')


class Model(Section):
    preset: Literal["small", "gritlm-7b"]
    path: str = Field(description='"" = the preset; else a local model folder or .gguf file')
    device: Literal["auto", "cpu", "cuda"] | Annotated[str, StringConstraints(pattern=r"^cuda:\d+$")] = Field(
        description="auto, cpu, cuda or cuda:N (cuda without CUDA is an error)")
    dtype: DType
    inference_dtype: Literal["auto", "float32", "bfloat16"]
    quantization: Literal["nf4"] | None = Field(description="null, or nf4 (QLoRA; bitsandbytes runs it on a CPU too, slowly)")
    mixed_precision: Literal["no", "bf16", "fp16"]
    lora: Lora


class Lengths(Section):
    query: Positive
    document: Positive
    prompt: Positive
    target: Positive


class Embed(Section):
    batch_size: Positive
    train_contexts: Count = Field(description="training contexts embed_contexts embeds (0 = all)")


class Instructions(Section):
    context_max_utterances: Positive
    context_max_chars: Positive
    max_train_turns: PerDataset = Field(description="per dataset, 0 = all")
    max_response: Count = Field(description="0 = all")
    max_dm: Count = Field(description="0 = all")


class Training(Section):
    """What warm-up and fine-tuning share."""

    steps: Positive
    lr: Rate
    temperature: Rate
    catalogue_batch: Positive
    item_bias: StrictBool
    item_bias_lr: Rate
    item_bias_init: ItemInit
    item_table: ItemTable
    warmup_ratio: Annotated[StrictFloat | StrictInt, Field(ge=0, lt=1)]
    grad_accum: Positive
    save_every: Positive
    gradient_checkpointing: StrictBool


class Warmup(Training):
    batch_size: Annotated[StrictInt, Field(ge=2, description="pairs per task per step (in-batch negatives: >= 2)")]
    retrieval_objective: Literal["in_batch", "catalogue"]


class GenerationWeights(Section):
    ranking: Count
    dm: Count
    response: Count


class TrunkPass(Section):
    passes: Count = Field(description="0 = none")
    lr: Rate
    bias_lr: Rate
    batch_size: Positive


class Finetune(Training):
    retrieval_batch: Positive
    generation_batch: Count
    generation_weights: GenerationWeights
    lambda_cl: Weight
    lambda_gen: Weight
    in_batch_negatives: StrictBool
    retrieval_objective: Literal["mined", "catalogue"]
    item_offset: StrictBool
    item_offset_lr: Rate
    validate_every: Count = Field(description="0 = no validation passes")
    validation_queries: Count = Field(description="0 = the whole validation split")
    trunk_pass: TrunkPass


class Mining(Section):
    pool: Positive
    index: Literal["flat", "hnsw", "ivf"]
    use_gpu: StrictBool
    exclude_context_items: StrictBool
    conv_aggregation: Literal["max", "mean"]


class Ranking(Section):
    candidates: Annotated[StrictInt, Field(ge=2)]
    knowledge_utterances: Positive
    items_in_response: Positive


class ItemOffsets(Section):
    fit: StrictBool
    lr: Weight
    epochs: Count
    batch_size: Count

    @model_validator(mode="after")
    def fitting_needs_a_schedule(self) -> "ItemOffsets":
        if self.fit and (self.epochs < 1 or self.batch_size < 1 or self.lr <= 0):
            raise ValueError("expected epochs >= 1, batch_size >= 1 and lr > 0 when fit is true")
        return self


class Knowledge(Section):
    co_mention_beta: list[StrictFloat | StrictInt] = Field(min_length=1)
    text_neighbours: list[Positive] = Field(min_length=1)
    encoder_neighbours: list[Positive] = Field(min_length=1)
    neighbour_power: list[Annotated[StrictFloat | StrictInt, Field(gt=0)]] = Field(min_length=1)
    weight_step: Annotated[StrictFloat | StrictInt, Field(gt=0, le=1, description="the mixtures' weight grid step")]


class DMValidation(Section):
    fraction: Fraction
    max_turns: Count = Field(description="0 = all")
    weights: list[Weight] = Field(min_length=1)
    head_l2: list[Rate] = Field(description="[] = the training shares only")


class Eval(Section):
    max_retrieval: PerDataset = Field(description="per dataset, 0 = all")
    max_generation: PerDataset = Field(description="per dataset, 0 = all")
    max_responses: Count
    max_dm: Count = Field(description="0 = all")
    max_dm_generation: Count
    dm_validation: DMValidation
    top_k: Annotated[StrictInt, Field(ge=50, description="the lists' length: Recall@50 needs 50")]
    prior_betas: list[Weight] = Field(min_length=1)
    max_validation: Count = Field(description="0 = all")
    bootstrap: Positive
    generation_batch: Positive
    max_new_tokens_ranking: Positive
    max_new_tokens_response: Positive
    max_new_tokens_dm: Positive


class Simulate(Section):
    dialogues: PerDataset = Field(description="seeded test dialogues per dataset, 0 = all")
    turns: Positive = Field(description="recommender turns before a seeker gives up")
    opening: Literal["dialogue", "template"] = Field(description="the first seeker utterance: the dialogue's or from metadata")
    seeker: Literal["template", "model"] = Field(description="who writes the seeker's words")
    max_new_tokens_seeker: Positive
    always_recommend: StrictBool = Field(description="also ReFICR recommending at every turn (ranked+knowledge)")
    transcripts: Count


class Params(Section):
    profile: str
    seed: Count
    negatives: Positive = Field(description="mined negatives per query (paper: 9)")
    data: Data
    model: Model
    lengths: Lengths
    embed: Embed
    instructions: Instructions
    warmup: Warmup
    mining: Mining
    ranking: Ranking
    finetune: Finetune
    item_offsets: ItemOffsets
    knowledge: Knowledge
    eval: Eval
    simulate: Simulate

    @model_validator(mode="after")
    def ranking_fits_the_list(self) -> "Params":
        if self.ranking.candidates > self.eval.top_k:
            raise ValueError(f"expected ranking.candidates ({self.ranking.candidates}) <= eval.top_k ({self.eval.top_k})")
        return self


UNION_TAGS = {"int", "float", "bool", "str", "none", "[key]"}  # where pydantic's error locations name a union's branch
TAG_STARTS = ("function-", "literal[", "constrained-")


def _allowed(error: dict) -> str:
    """What the schema allows where ``error`` happened, in words."""
    ctx = error.get("ctx") or {}
    if error["type"] == "literal_error":
        return f"one of {ctx['expected']}"
    kinds = {"int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
             "float_type": "a number", "bool_type": "true or false", "string_type": "a string",
             "list_type": "a list", "model_type": "a mapping", "dict_type": "a mapping"}
    if error["type"] in kinds:
        return kinds[error["type"]]
    bounds = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
              "less_than_equal": "<= {le}", "too_short": "at least {min_length} entries"}
    if error["type"] in bounds:
        return bounds[error["type"]].format(**ctx)
    return error["msg"].lower()


def _field(loc: tuple) -> tuple[Any, Any]:
    """(the annotation, the field info) of the schema at ``loc``; (None, None) where ``loc`` leaves the schema
    (a list index, a key it does not have)."""
    model, info = Params, None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None, None
        info = fields[part]
        model = info.annotation
    return model, info


def _field_help(loc: tuple) -> str:
    """The description of the field at ``loc`` (empty when it has none)."""
    info = _field(loc)[1]
    return (info.description or "") if info else ""


def _keys(loc: tuple) -> list[str]:
    """The keys the schema has at ``loc`` (a section's path)."""
    return list(getattr(_field(loc)[0], "model_fields", {}))


def validate(params: Any, source: str = "params.yaml") -> dict:
    """``params`` unchanged when the schema accepts it; else ``ParamError``: one line naming the first wrong key."""
    if not isinstance(params, dict):
        raise ParamError(f"{source}: a {type(params).__name__} at the top; expected a mapping of the keys in "
                         "profiles/small.yaml")
    try:
        Params.model_validate(params)
    except ValidationError as err:
        error = err.errors()[0]
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and (p in UNION_TAGS or p.startswith(TAG_STARTS))))
        key = ".".join(str(p) for p in loc)
        allowed = _allowed(error)
        help_text = _field_help(loc)
        if error["type"] == "value_error":  # a rule across keys (a model validator): its own words
            where = f"{source}: {key}" if key else source
            raise ParamError(f"{where}: {error['msg'].removeprefix('Value error, ')}") from None
        what = "missing" if error["type"] == "missing" else f"{error['input']!r} is not allowed"
        if error["type"] == "extra_forbidden":
            what, allowed = "unknown key", "one of " + ", ".join(_keys(loc[:-1]))
        more = f" ({help_text})" if help_text else ""
        raise ParamError(f"{source}: {key}: {what}; expected {allowed if error['type'] != 'missing' else 'a value'}"
                         f"{more}") from None
    return params
