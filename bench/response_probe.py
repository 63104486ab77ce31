"""Diagnostic: how many response-generation examples does the fine-tuned small model need before its greedy replies
stop opening with the dialogue-management explanations' "The user's ..." and start naming the items it is given?

    python bench/response_probe.py --steps 48 --batch 4 --eval-every 12   # writes bench/results-response-probe.json

The committed run's replies (README, "The generated replies are not yet replies"): 45 of 50 open with a sentence
about the conversation ("The user's response is in the first paragraph."), borrowed from the DM targets, every one of
whose explanations starts "The user's intention:". Fine-tuning draws its generation batch by task weight
(ranking, DM, response; ``finetune.generation_weights``, 1 each), 2 a step, so 72 steps show the response task ~48
examples. This probe continues training the committed adapter (``models/reficr``, or a fresh LoRA on
``models/base`` with ``--start base``) on generation alone, the tasks of ``--tasks`` drawn by their weights as
fine-tuning draws them (default: response and DM, so the DM targets keep pulling as they do in the joint run),
through the pipeline's TrainLoop, and every ``--eval-every`` steps
scores a seeded sample of the *validation* responses (ReDial valid + INSPIRED dev; the test split is never read):

- ``opener_rate``: greedy replies starting "The user's" (the borrowed opener);
- ``item_rate``: of the prompts that give items, replies naming at least one of them (title without its year);
- ``distinct2``: Distinct-2 (unique / total word bigrams) of the replies;
- ``gold_ppl``: perplexity of the gold replies given the prompts;
- ``loop_rate``: replies with a repeated span (``pipeline.grounding.has_loop``, evaluate's ``response.raw.loop_rate``);
- ``fallback_rate``, ``appended_rate``: what a person reads, each reply grounded as the recommender grounds it
  (``pipeline.grounding.ground_reply`` with the prompt's items and context; evaluate's ``response.reply.*``):
  replies with nothing usable left (the fixed fallback sentence instead), and replies that named none of the given
  items (the fallback sentence added).

``--steps 0`` scores an adapter as it is, without training: ``--adapter`` names another run's (a clone's
``models/reficr``) to compare two fine-tuning runs on the same validation replies.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import templates  # noqa: E402
from pipeline.data.items import item_titles  # noqa: E402
from pipeline.grounding import Catalogue, ground_reply, has_loop, normalize, without_year  # noqa: E402
from pipeline.metrics import distinct_n, perplexity  # noqa: E402
from pipeline.model import RetrievableLM  # noqa: E402
from pipeline.objectives import FinetuneObjective, GenerationTask  # noqa: E402
from pipeline.settings import Lengths  # noqa: E402
from pipeline.training import TrainConfig, TrainLoop  # noqa: E402
from stages._common import load_params  # noqa: E402
from stages._params import lora  # noqa: E402

OPENER = "The user's"
# the context slot of templates.RESPONSE, between the template's own words around it
_BEFORE, _AFTER = templates.RESPONSE.split("{context}")
CONTEXT = re.compile(re.escape(_BEFORE) + "(.*?)" + re.escape(_AFTER[: _AFTER.index("{")]), re.DOTALL)
TASKS = {"response": "data/instructions/response_train.parquet", "dm": "data/instructions/dm_train.parquet",
         "ranking": "data/negatives/ranking_train.parquet"}


def parse_tasks(spec: str) -> dict[str, int]:
    """``response,dm`` or ``ranking=1,dm=0,response=1``: each task's weight (as ``finetune.generation_weights``)."""
    weights = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, weight = part.partition("=")
        weights[name.strip()] = int(weight) if weight else 1
        if weights[name.strip()] < 0:
            raise ValueError(f"{part}: a weight is a non-negative integer")
    return weights


def prompt_context(prompt: str, instance_id: str) -> str:
    """The conversation context a response prompt (``templates.RESPONSE``) was built from."""
    found = CONTEXT.search(prompt)
    if found is None:
        raise ValueError(f"response_valid.parquet, instance {instance_id}: expected a response prompt with a "
                         "'- Conversation Context:' section")
    return found.group(1)


def names_an_item(reply: str, titles: list[str]) -> bool:
    """Whether the reply names one of ``titles`` (year and punctuation ignored, whole words only)."""
    text = f" {normalize(reply)} "
    return any(f" {without_year(t)} " in text for t in titles if without_year(t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--start", choices=["reficr", "base"], default="reficr",
                    help="continue the committed adapter (models/reficr) or train a fresh LoRA on models/base")
    ap.add_argument("--tasks", default="response,dm",
                    help=f"generation tasks, of {sorted(TASKS)}, each drawn by its weight (name=w; default 1)")
    ap.add_argument("--adapter", default=str(ROOT / "models/reficr"), help="the adapter --start reficr continues")
    ap.add_argument("--steps", type=int, default=48, help="training steps (0: score the adapter as it is)")
    ap.add_argument("--batch", type=int, default=4, help="generation examples per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=12)
    ap.add_argument("--eval-n", type=int, default=48, help="validation responses scored (seeded sample)")
    ap.add_argument("--out", default=str(ROOT / "bench/results-response-probe.json"))
    args = ap.parse_args()
    params = load_params()
    ln = params["lengths"]
    max_new = params["eval"]["max_new_tokens_response"]
    try:
        tasks = parse_tasks(args.tasks)
    except ValueError:
        ap.error(f"--tasks {args.tasks!r}: expected name or name=integer, comma-separated")
    unknown = sorted(set(tasks) - set(TASKS))
    if args.steps < 0:
        ap.error(f"--steps {args.steps}: expected 0 or more")
    if args.start == "base" and args.adapter != ap.get_default("adapter"):
        ap.error("--adapter: only with --start reficr (--start base trains a fresh LoRA)")
    if unknown or not any(tasks.values()):
        ap.error(f"--tasks: unknown {unknown} or every weight 0; expected a comma-separated subset of {sorted(TASKS)}")

    valid = pd.read_parquet(ROOT / "data/instructions/response_valid.parquet")
    valid = valid.sample(n=min(args.eval_n, len(valid)), random_state=0)
    titles = {}
    for ds in valid.dataset.unique():
        titles.update(item_titles(pd.read_parquet(ROOT / f"data/interim/{ds}/items.parquet")))
    given = [[titles[i] for i in ids] for ids in valid.item_ids]
    contexts = [prompt_context(p, i) for p, i in zip(valid.prompt, valid.instance_id)]
    catalogue = Catalogue(titles.values())
    print(f"{len(valid)} validation responses ({sum(map(bool, given))} with items); training on {tasks}, "
          f"from {args.start}", flush=True)

    random.seed(0)
    torch.manual_seed(0)
    lm = RetrievableLM.load(ROOT / "models/base", device="cpu", trainable=True)
    if args.start == "reficr":
        lm.load_adapter(Path(args.adapter), trainable=True)
    else:
        lm.attach_lora(lora(params), seed=0)
    curve: list[dict] = []

    def score(_lm: RetrievableLM) -> list[dict]:
        start = time.perf_counter()
        replies = lm.generate(valid.prompt.tolist(), max_new_tokens=max_new, batch_size=16,
                              max_prompt_length=ln["prompt"])
        gold = lm.score(valid.prompt.tolist(), valid.target.tolist(), max_prompt_length=ln["prompt"],
                        max_target_length=ln["target"])
        with_items = [(r, t) for r, t in zip(replies, given) if t]
        read = [ground_reply(r, t, c, catalogue) for r, t, c in zip(replies, given, contexts)]
        step = loop.step if loop is not None else 0  # --steps 0 scores before any loop exists
        row = {
            "step": step, "examples": step * args.batch,
            "opener_rate": round(float(np.mean([r.strip().startswith(OPENER) for r in replies])), 3),
            "item_rate": round(float(np.mean([names_an_item(r, t) for r, t in with_items])), 3) if with_items else None,
            "distinct2": round(distinct_n([re.findall(r"\w+|[^\w\s]", r.lower()) for r in replies], 2)["ratio"], 3),
            "gold_ppl": round(perplexity(gold), 2),
            "loop_rate": round(float(np.mean([has_loop(r) for r in replies])), 3),
            "fallback_rate": round(float(np.mean([r.fallback for r in read])), 3),
            "appended_rate": round(float(np.mean([r.appended for r in read])), 3),
            "examples_of_replies": replies[:3], "examples_read": [r.text for r in read[:3]],
            "seconds": round(time.perf_counter() - start, 1),
        }
        curve.append(row)
        print(json.dumps(row), flush=True)
        return [{k: v for k, v in row.items() if k in ("opener_rate", "distinct2", "gold_ppl")}]

    generation = []
    for name, weight in tasks.items():
        table = pd.read_parquet(ROOT / TASKS[name])
        generation.append(GenerationTask(name, table.prompt.tolist(), table.target.tolist(), weight))
    objective = FinetuneObjective([], generation, 0, args.batch, 0.05,
                                  Lengths(ln["query"], ln["document"], ln["prompt"], ln["target"]))
    loop = None
    start = time.perf_counter()
    if args.steps == 0:
        lm.model.eval()
        with torch.no_grad():
            score(lm)
        write(args, valid, curve, start)
        return
    work = Path("/tmp/reficr-response-probe")
    shutil.rmtree(work, ignore_errors=True)  # never resume an earlier probe
    loop = TrainLoop(lm, TrainConfig(steps=args.steps, lr=args.lr, save_every=10 ** 9), objective, work,
                     validate=score, validate_every=args.eval_every)
    loop.run()
    write(args, valid, curve, start)


def write(args: argparse.Namespace, valid: pd.DataFrame, curve: list[dict], start: float) -> None:
    result = {"args": vars(args), "validation_responses": len(valid), "curve": curve,
              "minutes": round((time.perf_counter() - start) / 60, 1), "cpu_threads": torch.get_num_threads()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
