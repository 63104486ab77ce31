"""metrics/<dataset>.json -> metrics/summary.md: a paper-style table a person can read (systems in the order
of ``pipeline.evaluation.protocol.SYSTEMS``)."""

from __future__ import annotations

from pipeline.evaluation.protocol import FILTERED, PAIRED, SYSTEM_NAMES, SYSTEMS

DATASETS = (("redial", "ReDial"), ("inspired", "INSPIRED"))
# Published figures on the same standardised protocol (ReDial, dedup instance set, Recall per item): Kostric & Balog,
# SIGIR 2026 (repository iai-group/redial-reproducibility), every system trained on the full ReDial training split.
PUBLISHED = (("MESE (GPT2-medium at R@50: 0.371)", 0.025, 0.159, 0.361), ("PECRS", 0.022, 0.143, 0.341),
             ("UniCRS", 0.024, 0.180, 0.335), ("ECR", 0.026, 0.181, 0.337), ("ReFICR (GritLM-7B)", 0.018, 0.213, 0.465))
RETRIEVAL_ONLY = [s.name for s in SYSTEMS if s.sample == "retrieval"]


def dm_prior(m: dict) -> str:
    """How dialogue management's prior was made, in words (metrics before the DM head have no ``dm.prior``)."""
    if m.get("dm.prior") == "head":
        return f"prior: the DM head, a logistic regression on the turn's words fitted on the training turns, L2 {m['dm.head_l2']:g}"
    return "prior: the action sequences' training shares"


def fmt(m: dict, key: str) -> str:
    value = m.get(key)
    if value is None or value != value:  # missing, or nan (a mean over nothing)
        return "–"
    low, high = m.get(f"{key}.ci_low"), m.get(f"{key}.ci_high")
    return f"{value:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def table(name: str, m: dict) -> list[str]:
    lines = [f"## {name}", ""]
    for variant in ("full", "dedup"):
        lines += [f"### {variant} instance set (Recall per item, 95% bootstrap CI over dialogues)", "",
                  "| system | n | R@1 | R@10 | R@50 | R@10 per turn | MRR@10 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for s in SYSTEM_NAMES:
            if f"{s}.{variant}.recall@1.per_item" not in m:
                continue
            p = f"{s}.{variant}"
            lines.append(f"| {s} | {m[f'{p}.recall@1.per_item.n']} | {fmt(m, f'{p}.recall@1.per_item')} | "
                         f"{fmt(m, f'{p}.recall@10.per_item')} | {fmt(m, f'{p}.recall@50.per_item')} | "
                         f"{m[f'{p}.recall@10.per_turn']:.3f} | {m[f'{p}.mrr@10']:.3f} |")
        lines.append("")
    if any(f"paired.{a}-{b}.full.recall@10.per_item" in m for a, b in PAIRED):
        lines += ["### paired differences (Recall per item, system minus baseline on the same samples; 95% paired bootstrap CI over dialogues)", "",
                  "| difference | full R@10 | full R@50 | dedup R@10 | dedup R@50 |", "| --- | ---: | ---: | ---: | ---: |"]
        for a, b in PAIRED:
            cells = [fmt(m, f"paired.{a}-{b}.{v}.recall@{k}.per_item") for v in ("full", "dedup") for k in (10, 50)]
            lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
        if "retrieval+prior.beta" in m:
            beta = m["retrieval+prior.beta"]
            lines += ["", f"retrieval+prior: beta = {beta}, chosen on {m['retrieval+prior.validation_n']} validation gold items"
                          f"{' (' + m['retrieval+prior.chosen_at'] + ')' if 'retrieval+prior.chosen_at' in m else ''} "
                          f"(validation Recall, mean of @10 and @50: {m[f'retrieval+prior.validation_recall@10_50.beta={beta}']:.3f}; "
                          f"beta = 0, i.e. retrieval alone: {m.get('retrieval+prior.validation_recall@10_50.beta=0', float('nan')):.3f})"]
        if "item_offsets.adopted" in m:
            lines += ["", "item offsets (an extension; stage fit_items fits one vector per item after fine-tuning, the query "
                          "encoder fixed): " + ("adopted on the validation split: every ReFICR system above scores with them"
                                                if m["item_offsets.adopted"] else
                                                "not adopted on the validation split: the systems above score without them")
                          + " (its validation figures: metrics/item_offsets_<dataset>.json)"]
        lines.append("")
    lines += knowledge_lines(m)
    lines += ["### conversation", "",
              f"- perplexity of gold responses, given the gold items (oracle, as the paper): {m['response.ppl.gold_items']:.2f}; "
              f"given the model's own items (its top ranked, as many as the gold response names): {m['response.ppl.own_items']:.2f} "
              f"(n = {m['response.n']})",
              f"- Distinct-2 / Distinct-4, unique/total: {m['response.distinct@2.ratio']:.3f} / {m['response.distinct@4.ratio']:.3f}; "
              f"unique/responses (CRSLab): {m['response.distinct@2.per_response']:.3f} / {m['response.distinct@4.per_response']:.3f} "
              f"(n = {m['response.generated_n']})",
              f"- generated item mentions outside the corpus: {m['response.item_mentions_outside_corpus']} of {m['response.item_mentions']}",
              *grounding_lines(m),
              f"- ranking output parse rate (ranked+knowledge): {m['ranked+knowledge.ranking_output.parse_rate']:.3f}"]
    if "dm.weight" in m:
        lines.append(
            f"- dialogue management on held-out IARD (n = {m['dm.n']}): accuracy {m['dm.accuracy']:.3f}, micro-F1 {m['dm.micro_f1']:.3f}; "
            f"majority action set ({m.get('dm.majority.actions', '?')}): accuracy {m.get('dm.majority.accuracy', float('nan')):.3f}, "
            f"micro-F1 {m.get('dm.majority.micro_f1', float('nan')):.3f}; accuracy difference "
            f"{fmt(m, 'paired.dm-majority.accuracy')} (paired bootstrap over dialogues). "
            f"The action is the scored choice ({dm_prior(m)}, plus weight {m['dm.weight']:g} times the model's calibrated "
            f"evidence; both chosen on {m.get('dm.validation.n', '?')} validation turns: accuracy "
            f"{m.get('dm.validation.accuracy', float('nan')):.3f} vs majority {m.get('dm.validation.majority_accuracy', float('nan')):.3f}), "
            f"so every output names one (parse rate {m['dm.parse_rate']:.3f}); the paper's unconstrained generation names one in "
            f"{m.get('dm.free_generation.parse_rate', float('nan')):.3f} of {m.get('dm.free_generation.n', '?')} turns "
            f"(accuracy {m.get('dm.free_generation.accuracy', float('nan')):.3f}, micro-F1 {m.get('dm.free_generation.micro_f1', float('nan')):.3f})")
    elif "dm.accuracy" in m:  # metrics written before the scored choice (generation, scored only where it named none)
        lines.append(f"- dialogue management on held-out IARD: accuracy {m['dm.accuracy']:.3f}, micro-F1 {m['dm.micro_f1']:.3f}, "
                     f"parse rate of the free generation {m['dm.parse_rate']:.3f}, the other {m.get('dm.action_scored', 0)} "
                     f"had their action chosen by scoring (n = {m['dm.n']}); majority-action baseline "
                     f"({m.get('dm.majority.actions', '?')}): accuracy {m.get('dm.majority.accuracy', float('nan')):.3f}, "
                     f"micro-F1 {m.get('dm.majority.micro_f1', float('nan')):.3f}")
    return lines + [""]


def best(m: dict, names, key: str = "dedup.recall@50.per_item") -> str | None:
    scored = [n for n in names if f"{n}.{key}" in m]
    return max(scored, key=lambda n: m[f"{n}.{key}"]) if scored else None


def published_table(m: dict) -> list[str]:
    """ReDial's dedup figures beside the published ones on the same protocol (ours: the whole test split)."""
    ours = [n for n in (best(m, [s for s in RETRIEVAL_ONLY if s.startswith("retrieval")]),
                        best(m, [s for s in RETRIEVAL_ONLY if not s.startswith("retrieval")])) if n]
    if not ours:
        return []
    lines = ["## ReDial beside the published figures (dedup instance set, Recall per item)", "",
             "Published: Kostric & Balog, SIGIR 2026, the standardised ReDial test set, systems trained on the full ReDial "
             "training split (10,006 dialogues). Ours: the same test instances, trained on "
             f"{m.get('knowledge.train_dialogues', '?')} training dialogues (the data mirror's, less the validation split); the best "
             "ReFICR system and the best baseline of the table below (by dedup R@50).", "",
             "| system | source | R@1 | R@10 | R@50 |", "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | published | {r1:.3f} | {r10:.3f} | {r50:.3f} |" for name, r1, r10, r50 in PUBLISHED]
    for name in ours:
        p = f"{name}.dedup"
        lines.append(f"| {name} (n {m[f'{p}.recall@1.per_item.n']}) | this run | {fmt(m, f'{p}.recall@1.per_item')} | "
                     f"{fmt(m, f'{p}.recall@10.per_item')} | {fmt(m, f'{p}.recall@50.per_item')} |")
    return lines + [""]


def knowledge_lines(m: dict) -> list[str]:
    """What validation chose for the collaborative signals and retrieval+knowledge, the filtered lists, the content
    check and the LLM ranking against its input list."""
    if "knowledge.validation_n" not in m:
        return []

    def weights(name: str) -> str:
        return ", ".join(f"{k.rsplit('.', 1)[1]} {v:g}" for k, v in m.items() if k.startswith(f"knowledge.{name}.weight.") and v)

    lines = [f"collaborative signals and retrieval+knowledge (an extension), chosen on {m['knowledge.validation_n']} validation "
             f"gold items (dedup, mean of Recall@10 and @50): co-mention beta {m['knowledge.co_mention_beta']:g}; TF-IDF "
             f"neighbours {m['knowledge.text_neighbours']} (power {m['knowledge.text_power']:g}); encoder neighbours "
             f"{m['knowledge.encoder_neighbours']} (power {m['knowledge.encoder_power']:g}); collaborative_mix: {weights('collaborative_mix')}; "
             f"retrieval+knowledge: {weights('retrieval+knowledge')}. Validation scores: "
             + ", ".join(f"{k.split('knowledge.validation.', 1)[1]} {v:.3f}" for k, v in m.items() if k.startswith("knowledge.validation.")), ""]
    if any(f"{s}.filtered.dedup.recall@10.per_item" in m for s in FILTERED):
        lines += ["### as a product shows them: the items named in the context left out (dedup gold)", "",
                  "| system | n | R@10 unfiltered | R@10 filtered | R@50 unfiltered | R@50 filtered |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for s in FILTERED:
            if f"{s}.filtered.dedup.recall@10.per_item" in m:
                lines.append(f"| {s} | {m[f'{s}.filtered.dedup.recall@10.per_item.n']} | {fmt(m, f'{s}.dedup.recall@10.per_item')} | "
                             f"{fmt(m, f'{s}.filtered.dedup.recall@10.per_item')} | {fmt(m, f'{s}.dedup.recall@50.per_item')} | "
                             f"{fmt(m, f'{s}.filtered.dedup.recall@50.per_item')} |")
        lines.append("")
    if m.get("content_check.n"):
        lines += [f"content check ({m['content_check.n']} hand-written requests for a genre, {m.get('content_check.skipped', 0)} "
                  "skipped; share of the top 10, named items left out, whose metadata lists the asked genre): "
                  + ", ".join(f"{s} {m[f'content_check.{s}.genre_precision@10']:.3f}" for s in ("popularity", "retrieval", "retrieval+knowledge"))
                  + f"; the catalogue's base rate {m['content_check.base_rate']:.3f}", ""]
    if "ranked+knowledge.full.recall@1.per_item" in m and "retrieval+knowledge@gen.full.recall@1.per_item" in m:
        lines += [f"LLM ranking of retrieval+knowledge's top candidates, generation sample (n {m['ranked+knowledge.full.recall@1.per_item.n']} "
                  f"gold items; {m['ranked+knowledge.dedup.recall@1.per_item.n']} dedup): R@1 ranked+knowledge "
                  f"{fmt(m, 'ranked+knowledge.full.recall@1.per_item')} vs its input list {fmt(m, 'retrieval+knowledge@gen.full.recall@1.per_item')}; "
                  f"dedup {fmt(m, 'ranked+knowledge.dedup.recall@1.per_item')} vs {fmt(m, 'retrieval+knowledge@gen.dedup.recall@1.per_item')}", ""]
    return lines


def summary_markdown(metrics: dict[str, dict], simulated: dict[str, dict] | None = None) -> str:
    """``metrics``: dataset -> its flat metrics; ``simulated``: dataset -> its ``simulate.*`` metrics."""
    lines = ["# reficr evaluation summary", "",
             "Test split; per-item Recall@k (CRSLab convention) unless said; `full` = all gold items, `dedup` = gold items "
             "not seen in the context. Retrieval-only systems are scored on every test instance where `eval.max_retrieval` is 0. "
             "Generating systems (`retrieval@gen` and below) are scored on the generation sample (`eval.max_generation`, n in "
             "their rows): every instance costs each LLM ranking a generation, which the CPU profile's time budget limits.", ""]
    lines += published_table(metrics["redial"])
    for dataset, name in DATASETS:
        lines += table(name, metrics[dataset])
    for dataset, name in DATASETS:
        if simulated and dataset in simulated:
            lines += simulation_table(name, simulated[dataset])
    return "\n".join(lines)


def simulation_systems(m: dict) -> list[str]:
    """The simulated systems, in the order the stage ran them."""
    return list(dict.fromkeys(k.split(".")[1] for k in m if k.endswith(".success@1") and not k.startswith("simulate.paired")))


def simulation_table(name: str, m: dict) -> list[str]:
    """Simulated seekers (``pipeline.evaluation.simulation``): success within 1, 3 and T turns, mean turns to success,
    the last list's Recall, how often the system recommended; the reference system's paired differences."""
    turns, n = int(m["simulate.turns"]), int(m["simulate.dialogues.simulated"])
    shown = sorted({1, min(3, turns), turns})
    opening = ("opens with the dialogue's first seeker utterance (a request from the metadata where that names a target)"
               if m.get("simulate.opening") == "dialogue" else "opens with a request built from the metadata")
    lines = [f"## {name}: simulated seekers ({n} seeded test dialogues, up to {turns} turns, {m['simulate.seeker']} seeker)", "",
             f"A seeker knows its dialogue's gold items (targets), {opening}, answers a question or a miss with one "
             "attribute of a target (genre, director, actor, decade), never its title, and accepts when a target is "
             "among the recommended items. 95% bootstrap CIs over dialogues.", "",
             "| system | " + " | ".join(f"success@{t}" for t in shown) + " | mean turns to success (n) | last list R@10 | "
             "last list R@50 | recommends at |", "| --- |" + " ---: |" * (len(shown) + 4)]
    for system in simulation_systems(m):
        p = f"simulate.{system}"
        share = m[f"{p}.recommend_share"]
        lines.append(f"| {system} | " + " | ".join(fmt(m, f"{p}.success@{t}") for t in shown) + " | "
                     f"{fmt(m, f'{p}.mean_turns_to_success')} ({m[f'{p}.mean_turns_to_success.n']}) | "
                     f"{fmt(m, f'{p}.last_list.recall@10')} | {fmt(m, f'{p}.last_list.recall@50')} | "
                     + ("–" if share != share else f"{share:.0%} of turns") + " |")
    paired = [k[len("simulate.paired."):-len(f".success@{turns}")] for k in m
              if k.startswith("simulate.paired.") and k.endswith(f".success@{turns}")]
    if paired:
        reference = paired[0].split("-", 1)[0]
        lines += ["", f"{reference} minus each system, success@{turns}, paired over the same seekers: "
                  + "; ".join(f"{k.split('-', 1)[1]} {fmt(m, f'simulate.paired.{k}.success@{turns}')}" for k in paired)]
        asked = f"simulate.{reference}.asked_first"
        if f"{asked}.n" in m:
            told = f"simulate.{reference}.recommended_first"
            lines.append(f"- {reference} asked first in {m[f'{asked}.n']} dialogues (success@{turns} "
                         f"{fmt(m, f'{asked}.success@{turns}')}) and recommended first in {m[f'{told}.n']} "
                         f"({fmt(m, f'{told}.success@{turns}')}); descriptive, not causal: dialogue management asks where "
                         "the opening says little")
        lines.append(f"- seeker utterances replaced because they would have named a target: "
                     f"{int(m.get(f'simulate.{reference}.seeker_replaced', 0))}"
                     + (f"; the model seeker's utterances regenerated: {int(m.get(f'simulate.{reference}.seeker_regenerated', 0))}"
                        if m.get("simulate.seeker") == "model" else "") + f" ({reference}'s seekers)")
    return lines + [""]


def grounding_lines(m: dict) -> list[str]:
    """Replies naming an item outside the turn's recommended items, looping, copying the seeker, echoing the prompt:
    the model's generation against what a person reads (pipeline.workflow.grounding)."""
    if "response.reply.loop_rate" not in m:
        return []
    rate = "{:.0%}".format
    echo = (f", the prompt echoed or talked about (or a bracketed slot) {rate(m['response.raw.echo_rate'])} -> {rate(m['response.reply.echo_rate'])}"
            if "response.raw.echo_rate" in m else "")  # metrics written before the echo rule have none
    return [f"- replies (n = {m['response.generated_n']}), model generation -> what a person reads: an item outside the "
            f"recommended list {rate(m['response.raw.outside_items_rate'])} -> {rate(m['response.reply.outside_items_rate'])}, "
            f"a loop {rate(m['response.raw.loop_rate'])} -> {rate(m['response.reply.loop_rate'])}, "
            f"the seeker's words copied {rate(m['response.raw.copy_rate'])} -> {rate(m['response.reply.copy_rate'])}{echo}; "
            f"{rate(m['response.reply.fallback_rate'])} had nothing usable left and got the fixed fallback sentence, "
            f"{rate(m.get('response.reply.items_appended_rate', 0))} named none of the recommended items and got it added"]
