"""The ranking subtask: training instances, output parsing and the seeded random ablation (hand-checked)."""

from __future__ import annotations

from pipeline.tasks.ranking import (
    apply_ranking,
    build_ranking_instance,
    format_ranking_target,
    parse_ranking,
    parse_statistics,
    random_ranking,
)


def test_ranking_instance_inserts_gold_shuffles_and_targets_gold_first():
    inst = build_ranking_instance(["a", "b", "c", "d"], ["x"], n=3, seed_key="s:1")
    assert sorted(inst.candidates) == ["a", "b", "x"]
    assert sorted(inst.target_ids) == [1, 2, 3]
    ordered = [inst.candidates[i - 1] for i in inst.target_ids]
    assert ordered == ["x", "a", "b"]
    again = build_ranking_instance(["a", "b", "c", "d"], ["x"], n=3, seed_key="s:1")
    assert again == inst
    # a gold item already retrieved stays; targets list gold first, then retrieval order
    inst = build_ranking_instance(["a", "b", "c", "d"], ["c"], n=3, seed_key="s:2")
    assert [inst.candidates[i - 1] for i in inst.target_ids] == ["c", "a", "b"]
    assert format_ranking_target([2, 1]) == "[2]\n[1]"
    shuffled = {tuple(build_ranking_instance(list("abcdefghij"), ["a"], 10, f"k{i}").candidates) for i in range(5)}
    assert len(shuffled) > 1


def test_ranking_output_parsing_counts_never_crashes():
    parsed = parse_ranking("[2]\n[2]\n[11]\nI think\n[1] and [3]", n=10)
    assert parsed.order == [2, 1, 3] and parsed.unknown == 1 and parsed.duplicates == 1 and parsed.free_text_lines == 1
    assert parsed.parsed
    assert not parse_ranking("no idea", 10).parsed and parse_ranking("", 10).order == []
    assert apply_ranking(["c1", "c2", "c3"], ["r0", "c1", "c2", "c3"], parse_ranking("[2]\n[1]", 3)) == ["c2", "c1", "r0", "c3"]


def test_parse_statistics_count_over_a_batch():
    stats = parse_statistics([parse_ranking("[1]\n[2]", 3), parse_ranking("nothing", 3), parse_ranking("[9]\n[3]\n[3]", 3)])
    assert stats == {"parse_rate": 2 / 3, "unknown_ids": 1, "duplicate_ids": 1, "free_text_lines": 1, "mean_ids_listed": 1.0}


def test_random_ranking_shuffles_only_the_head_and_is_seeded():
    retrieved = [list("abcdefgh")]
    once = random_ranking(retrieved, 4, ["0:x"])
    assert once == random_ranking(retrieved, 4, ["0:x"])
    assert sorted(once[0][:4]) == list("abcd") and once[0][4:] == list("efgh")
    assert len({tuple(random_ranking(retrieved, 4, [f"0:{i}"])[0]) for i in range(8)}) > 1
