"""The LLM ranker (paper Sec. 3.4): the fine-tuned model writes a listwise ranking of the retrieved candidates,
given the conversation and the collaborative knowledge; ``pipeline.tasks.ranking`` parses and applies it."""

from __future__ import annotations

from pipeline.model.lm import RetrievableLM
from pipeline.tasks import templates
from pipeline.tasks.ranking import ParsedRanking, apply_ranking, parse_ranking


def rank_with_llm(lm: RetrievableLM, contexts: list[str], retrieved: list[list[str]], n: int, title: dict[str, str],
                  knowledge: list[str], max_new_tokens: int, batch_size: int,
                  max_prompt_length: int) -> tuple[list[list[str]], list[ParsedRanking], list[str]]:
    """The LLM's ranking of the top-``n`` candidates, then the retrieval order (so Recall@50 stays defined)."""
    prompts = [templates.ranking_prompt(c, [title[x] for x in r[:n]], k) for c, r, k in zip(contexts, retrieved, knowledge)]
    outputs = lm.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, max_prompt_length=max_prompt_length)
    ranked, parsed = [], []
    for out, r in zip(outputs, retrieved):
        p = parse_ranking(out, len(r[:n]))
        parsed.append(p)
        ranked.append(apply_ranking(r[:n], r, p))
    return ranked, parsed, outputs
