"""Scoring a few continuations of one prompt with a shared key/value cache (dialogue management's choices)."""

from __future__ import annotations

import os

import numpy as np
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from pipeline.model.lm import RetrievableLM

# the key/value cache's name in model outputs and forward arguments: `cache` since transformers 5.2x, `past_key_values`
# before (the GPU machines' image has 5.17; the old name is deprecated in 5.24 and due to go)
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@torch.no_grad()
def score_endings(lm: RetrievableLM, prompt: str, targets: list[str], max_prompt_length: int, max_target_length: int,
                  eos: bool = True) -> np.ndarray:
    """Log-likelihood of each target (its tokens, then EOS unless ``eos`` is False) given ``prompt``, as
    ``RetrievableLM.score`` sums it, but with the targets' shared token prefix run once and its key/value cache
    reused for the batch of their different endings: choosing among k endings costs one long and one short forward."""
    pairs = lm.tokenize_pairs([prompt] * len(targets), targets, max_prompt_length, max_target_length, eos=eos)
    seqs = [seq for seq, _ in pairs]
    n_prompt = pairs[0][1]
    shared = min(len(os.path.commonprefix(seqs)), min(len(s) for s in seqs) - 1)
    was_training = lm.model.training
    lm.model.eval()
    device = next(lm.model.parameters()).device
    head = lm.model(input_ids=torch.tensor([seqs[0][:shared]], device=device), use_cache=True)
    head_logp = torch.log_softmax(head.logits[0].float(), dim=-1)
    common = sum(float(head_logp[p - 1, seqs[0][p]]) for p in range(max(n_prompt, 1), shared))
    tails = [s[shared:] for s in seqs]
    ids, mask = lm.pad(tails, side="right")  # on the model's device
    cache = getattr(head, CACHE_FIELD)
    cache.batch_repeat_interleave(len(targets))
    attention = torch.cat([torch.ones(len(targets), shared, dtype=mask.dtype, device=device), mask], dim=1)
    logp = torch.log_softmax(lm.model(input_ids=ids, attention_mask=attention, **{CACHE_FIELD: cache}).logits.float(), dim=-1)
    first = head_logp[-1].gather(0, ids[:, 0])
    rest = (logp[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) * mask[:, 1:]).sum(dim=1)
    lm.model.train(was_training)
    return (common + first + rest).cpu().numpy().astype(np.float64)
