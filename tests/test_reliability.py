"""Reliability drill: bad input gets our one-line error or a counted repair, never a traceback or a
silently wrong table; a kill at any instant loses no output; a stage writes only into the checkout it runs in.

- fuzz: each raw reader on mutated copies of the committed real slices (truncation, type swaps, nulls, huge
  values, bad bytes): the only outcomes allowed are valid tables or a ``ReficrError`` naming the file;
- kills: ``atomic_dir`` killed between its two renames (SIGKILL, as a power cut), ingest killed at seeded random
  instants, warm-up killed mid-run: the next run completes and its outputs equal an uninterrupted run's;
- disk full: a 1 MiB tmpfs as the output folder (skipped where it cannot be mounted);
- the root: a stage run from a second checkout that shares this one's virtualenv writes only there;
- the user-error path: `error: ...` on stderr, exit 2, no traceback (REFICR_DEBUG=1 shows it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data.common import IngestLog
from pipeline.data.ingest import ingest, write_ingest
from pipeline.errors import ReficrError
from pipeline.io import atomic_dir, atomic_path, recover
from pipeline.model.base_model import weights_hash
from tests.conftest import RAW, ROOT, repo_env, run, tracked_files

PYTHON = sys.executable


# ----------------------------------------------------------------------------- fuzzing the readers
def _walk_and_replace(value, data, replacement):
    """``value`` with one node (drawn by ``data``) replaced by ``replacement``."""
    if isinstance(value, (dict, list)) and value and data.draw(st.integers(0, 4)) > 0:  # mostly deeper: the leaves
        keys = list(value.keys()) if isinstance(value, dict) else list(range(len(value)))
        key = data.draw(st.sampled_from(keys))
        copy = dict(value) if isinstance(value, dict) else list(value)
        copy[key] = _walk_and_replace(value[key], data, replacement)
        return copy
    return replacement


REPLACEMENTS = st.sampled_from([None, "", 0, -1, 1.5, True, [], {}, "x" * 20_001, "comedy", ["a", None], {"k": 1}, [[1]]])


def _mutate_bytes(raw: bytes, data) -> bytes:
    kind = data.draw(st.sampled_from(["truncate", "bad_bytes", "drop_line", "duplicate_line"]))
    if kind == "truncate":
        return raw[: data.draw(st.integers(0, len(raw)))]
    if kind == "bad_bytes":
        at = data.draw(st.integers(0, len(raw)))
        return raw[:at] + data.draw(st.sampled_from([b"\xff\xfe", b"\x00", b"\xc3", b"\t\t\n"])) + raw[at:]
    lines = raw.split(b"\n")
    at = data.draw(st.integers(0, len(lines) - 1))
    return b"\n".join(lines[:at] + lines[at + 1:] if kind == "drop_line" else lines[:at + 1] + lines[at:])


def _mutate_json_file(raw: bytes, data, lines: bool) -> bytes:
    """A JSON (or JSON-lines) file with one value swapped for a wrong-typed, null or huge one."""
    replacement = data.draw(REPLACEMENTS)
    if not lines:
        return json.dumps(_walk_and_replace(json.loads(raw), data, replacement)).encode()
    rows = raw.decode().splitlines()
    at = data.draw(st.integers(0, len(rows) - 1))
    rows[at] = json.dumps(_walk_and_replace(json.loads(rows[at]), data, replacement))
    return ("\n".join(rows) + "\n").encode()


def _mutate_tsv(raw: bytes, data) -> bytes:
    rows = raw.decode().split("\n")
    at = data.draw(st.integers(0, len(rows) - 1))
    fields = rows[at].split("\t")
    col = data.draw(st.integers(0, len(fields) - 1))
    fields[col] = data.draw(st.sampled_from(["", "x" * 20_001, "NOT_A_SPEAKER", "[]", "Title (99999)"]))
    rows[at] = "\t".join(fields)
    return "\n".join(rows).encode()


# (dataset, file under data/raw, how it is mutated)
FUZZED = [
    ("redial", "redial/test_data.jsonl", "jsonl"),
    ("redial", "redial/movies_with_mentions.csv", "bytes"),
    ("redial", "ievalm_crs/redial/id2info.json", "json"),
    ("inspired", "inspired/dialog_data/test.tsv", "tsv"),
    ("inspired", "inspired/unicrs_format_tamizh2907/train_data_dbpedia.jsonl", "jsonl"),
    ("iard", "iard/umap2020_IARD_Cai.json", "json"),
]
fuzz_counts: dict[str, dict[str, int]] = {}
EXAMPLES = 200  # per file: ~25 ms an ingest of the slices


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("fuzz") / "raw"
    shutil.copytree(RAW, dest)
    return dest


@pytest.mark.parametrize("dataset, rel, how", FUZZED, ids=[f[1] for f in FUZZED])
def test_a_mutated_raw_file_gives_valid_tables_or_our_error(raw_dir, dataset, rel, how):
    path = raw_dir / rel
    original = path.read_bytes()
    counts = fuzz_counts.setdefault(rel, {"inputs": 0, "tables": 0, "errors": 0})

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(data=st.data(), byte_level=st.booleans())
    def check(data, byte_level):
        if byte_level or how == "bytes":
            mutated = _mutate_bytes(original, data)
        elif how == "tsv":
            mutated = _mutate_tsv(original, data)
        else:
            mutated = _mutate_json_file(original, data, lines=how == "jsonl")
        path.write_bytes(mutated)
        counts["inputs"] += 1
        try:
            result = ingest(dataset, raw_dir)  # the tables are schema-validated inside; anything else is a bug
        except ReficrError as err:
            message = str(err)
            assert "\n" not in message.strip() and str(raw_dir) in message, message  # one line naming the file
            counts["errors"] += 1
        else:
            assert result.tables and all(len(t.columns) for t in result.tables.values())
            counts["tables"] += 1
        finally:
            path.write_bytes(original)

    check()
    assert counts["inputs"] >= EXAMPLES
    print(f"fuzz {rel}: {counts}")


def test_wrong_typed_values_found_in_the_drill_are_clear_errors(raw_copy):
    """The drill's raw tracebacks: each is now an error naming the file and the line or record."""
    test_file = raw_copy / "redial/test_data.jsonl"
    lines = test_file.read_text().splitlines()
    for mutate, says in [(lambda r: r["messages"][0].__setitem__("text", None), "line 1, conversationId"),
                         (lambda r: r.__setitem__("messages", None), "'messages' is null; expected a list"),
                         (lambda r: r["messages"][0].__setitem__("text", "x" * 10_001), "characters; expected at most 10,000")]:
        record = json.loads(lines[0])
        mutate(record)
        test_file.write_text("\n".join([json.dumps(record)] + lines[1:]) + "\n")
        with pytest.raises(ReficrError, match=r"test_data\.jsonl: line 1") as err:
            ingest("redial", raw_copy)
        assert says in str(err.value)
    test_file.write_text("\n".join(lines) + "\n")
    big = raw_copy / "redial/test_data.jsonl"
    big.write_text(json.dumps({"pad": "x" * 20_000}) + "\n")  # the train slices' lines are shorter than 10,000
    with pytest.raises(ReficrError, match=r"test_data\.jsonl: line 1: 20,011 characters; expected a record of at most 10,000"):
        ingest("redial", raw_copy, max_record_chars=10_000)
    (raw_copy / "redial/test_data.jsonl").unlink()
    (raw_copy / "redial/test_data.jsonl").mkdir()
    with pytest.raises(ReficrError, match=r"test_data\.jsonl: is a directory"):
        ingest("redial", raw_copy)


def test_id2info_values_are_checked_and_counted_truthfully(raw_copy):
    path = raw_copy / "ievalm_crs/redial/id2info.json"
    info = json.loads(path.read_text())
    keys = list(info)
    info[keys[0]] = {"title": "no fields"}  # no metadata field: title-only, and the report says so
    info[keys[1]]["genre"] = "comedy"  # one string: a one-element list, not letters
    path.write_text(json.dumps(info))
    result = ingest("redial", raw_copy)
    items = result.tables["items"].set_index("item_id")
    first, second = f"redial:{keys[0]}", f"redial:{keys[1]}"
    if first in items.index:
        assert items.loc[first, "metadata_source"] == "title_only" and "Genres" not in items.loc[first, "description"]
    if second in items.index:
        assert "Genres: comedy." in items.loc[second, "description"] and "c, o, m" not in items.loc[second, "description"]
    counts = result.report["counts"]
    assert counts["id2info_entries_without_fields"] == 1 and counts["repaired:metadata_field_not_a_list"] == 1
    info[keys[2]] = "a string"
    path.write_text(json.dumps(info))
    with pytest.raises(ReficrError, match=rf"id2info\.json: record '{keys[2]}': a JSON str; expected an object"):
        ingest("redial", raw_copy)


# ----------------------------------------------------------------------------- crash-safe outputs
def test_atomic_dir_killed_between_its_renames_is_recovered(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old")
    code = ("import sys; from pathlib import Path; from pipeline.io import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n    (Path(tmp) / 'a.txt').write_text('new')\n")
    env = dict(os.environ, REFICR_CRASH_AT="atomic_dir.between_renames")
    killed = subprocess.run([PYTHON, "-c", code, str(target)], cwd=ROOT, env=env)
    assert killed.returncode == -signal.SIGKILL
    assert not target.exists() and (tmp_path / ".out.old/a.txt").read_text() == "old"  # the instant that used to lose it
    assert list(tmp_path.glob(".out.*.tmp"))  # the dead process's new copy
    recover(target)
    assert (target / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_block_leaves_the_previous_output(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def _dead_pid() -> int:
    """A process id that has just exited (not reused within the test)."""
    done = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_recover_removes_only_this_targets_temporaries_of_dead_local_processes(tmp_path):
    from pipeline.io import HOST

    dead = _dead_pid()
    (tmp_path / "out").mkdir()
    leftovers = {
        f".out.{dead}@{HOST}.abc_12.tmp": False,  # a dead writer of "out": removed
        f".out.{dead}@{HOST}.0a1b2c3d.tmp": False,  # a delete (renamed first) that was killed mid-way: removed
        f".out.{os.getpid()}@{HOST}.live.tmp": True,  # a live writer (this process)
        f".out.{dead}@otherhost.abc.tmp": True,  # another host's process: its pid means nothing here
        f".out.5.{dead}@{HOST}.abc.tmp": True,  # a temporary of the sibling output "out.5"
    }
    for name in leftovers:
        (tmp_path / name).mkdir()
    recover(tmp_path / "out")
    assert {name: (tmp_path / name).exists() for name in leftovers} == leftovers


def test_a_checkpoint_that_fails_to_write_leaves_no_temporary(tmp_path, monkeypatch):
    from pipeline.training import loop as training

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    class Loop:  # what save_checkpoint reads of a TrainLoop, the real method on it
        out_dir, step, fingerprint, extra_params = tmp_path, 3, "f", {}
        config = training.TrainConfig(steps=3, lr=1e-3)

    monkeypatch.setattr(training, "save_file", fail)
    (tmp_path / training.CHECKPOINT).mkdir()
    (tmp_path / training.CHECKPOINT / "state.json").write_text("previous")
    loop = Loop()
    loop.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    loop.accelerator = type("A", (), {"unwrap_model": staticmethod(lambda m: m)})()
    loop.lm = type("L", (), {"model": type("M", (), {"save_pretrained": lambda self, path, **kw: Path(path).mkdir()})()})()
    with pytest.raises(ReficrError, match="no space left"):
        training.TrainLoop.save_checkpoint(loop)
    assert sorted(p.name for p in tmp_path.iterdir()) == [training.CHECKPOINT]
    assert (tmp_path / training.CHECKPOINT / "state.json").read_text() == "previous"


def _tiny_repo(dest: Path) -> Path:
    """Tracked files of this checkout with the tiny profile and the committed slices as data/raw."""
    for rel in tracked_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    params = yaml.safe_load((dest / "profiles/tiny.yaml").read_text())
    params["data"]["manifest"] = "tests/fixtures/raw/manifest.json"
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(dest / "tests/fixtures/raw", dest / "data/raw")
    return dest


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}


def test_ingest_killed_at_random_instants_then_rerun_gives_the_uninterrupted_output(tmp_path):
    repo = _tiny_repo(tmp_path / "repo")
    env = repo_env(repo)
    run([PYTHON, "-m", "stages.ingest", "redial"], repo, env)
    reference = _tables(repo / "data/interim/redial")
    report = json.loads((repo / "data/interim/redial/ingest_report.json").read_text())
    rng = random.Random(12)
    kills = 0
    for attempt in range(6):
        crash = dict(env, REFICR_CRASH_AT="atomic_dir.between_renames") if attempt == 0 else env
        proc = subprocess.Popen([PYTHON, "-m", "stages.ingest", "redial"], cwd=repo, env=crash,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt:
            time.sleep(rng.uniform(0.5, 4.0))  # interpreter start, imports, reading, writing: anywhere
            proc.send_signal(signal.SIGKILL)
        kills += proc.wait() == -signal.SIGKILL
        run([PYTHON, "-m", "stages.ingest", "redial"], repo, env)  # the next run completes ...
        out = repo / "data/interim/redial"
        got = _tables(out)  # ... and its outputs are complete and equal to the uninterrupted run's
        assert got.keys() == reference.keys() and all(got[k].equals(reference[k]) for k in got)
        assert json.loads((out / "ingest_report.json").read_text()) == report
        assert sorted(p.name for p in out.parent.iterdir()) == ["redial"]  # no .old, no stale .tmp
    assert kills >= 1


@pytest.mark.slow
def test_warmup_killed_mid_run_resumes_to_the_same_weights(tiny_run, tmp_path):
    repo = tiny_run.copy(tmp_path / "repo")
    env = repo_env(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["warmup"]["save_every"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(repo / "models/init")
    shutil.rmtree(repo / "checkpoints", ignore_errors=True)
    run([PYTHON, "-m", "stages.warmup"], repo, env)  # uninterrupted (save_every does not change the weights)
    reference = weights_hash(repo / "models/init")
    shutil.rmtree(repo / "models/init")
    shutil.rmtree(repo / "checkpoints")
    state = repo / "checkpoints/warmup/checkpoint/state.json"
    for crash_at in ("checkpoint", "atomic_dir.between_renames"):
        extra = {"REFICR_CRASH_AT": crash_at} if crash_at != "checkpoint" else {}
        proc = subprocess.Popen([PYTHON, "-m", "stages.warmup"], cwd=repo, env=dict(env, **extra),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if crash_at == "checkpoint":  # killed as soon as the first checkpoint is on disk
            deadline = time.monotonic() + 600
            while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        assert not (repo / "models/init").exists()
    log = run([PYTHON, "-m", "stages.warmup"], repo, env)
    assert "resumed from" in log
    assert weights_hash(repo / "models/init") == reference


def test_a_full_disk_is_a_clear_error_and_the_previous_output_stays(tmp_path, raw_copy):
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'not permitted'})")
    try:
        out = mount / "redial"
        out.mkdir()
        (out / "marker.txt").write_text("previous output")
        result = ingest("redial", raw_copy)
        frame = result.tables["dialogues"]
        frame["text"] = [os.urandom(3000).hex() for _ in range(len(frame))]  # incompressible: over 2 MiB
        assert len(frame) * 6000 > 2 * 2**20
        with pytest.raises(ReficrError, match=r"no space left"):
            write_ingest(result, out)
        assert (out / "marker.txt").read_text() == "previous output"
        assert sorted(p.name for p in mount.iterdir()) == ["redial"]  # no partial output left beside it
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# ----------------------------------------------------------------------------- the root is where the user runs
def test_a_stage_run_in_a_second_checkout_writes_only_there(tmp_path):
    """Two checkouts share one virtualenv (the one running this test, whose package is installed from ROOT):
    ingest run in B writes B's data/interim, not A's and not the installed code's checkout."""
    a, b = _tiny_repo(tmp_path / "a"), _tiny_repo(tmp_path / "b")
    installed = ROOT / "data/interim/inspired"
    before = installed.stat().st_mtime_ns if installed.exists() else None
    # from B's root; then from the installed code's checkout with REFICR_ROOT=B
    for cwd, env in ((b, repo_env(b)), (ROOT, dict(repo_env(b), REFICR_ROOT=str(b)))):
        shutil.rmtree(b / "data/interim", ignore_errors=True)
        run([PYTHON, "-m", "stages.ingest", "inspired"], cwd, env)
        assert (b / "data/interim/inspired/items.parquet").exists()
    assert not (a / "data/interim").exists()
    assert (installed.stat().st_mtime_ns if installed.exists() else None) == before


# ----------------------------------------------------------------------------- the user-error path
def test_a_stage_error_is_one_line_without_traceback(tmp_path):
    repo = _tiny_repo(tmp_path / "repo")
    (repo / "data/raw/iard/umap2020_IARD_Cai.json").write_text('{"1": "not an object"}')
    env = repo_env(repo)
    failed = subprocess.run([PYTHON, "-m", "stages.ingest", "iard"], cwd=repo, env=env, capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: data/raw/iard/umap2020_IARD_Cai.json: conversationId 1: the conversation is a JSON str; expected a JSON object")
    assert "Traceback" not in failed.stderr
    debug = subprocess.run([PYTHON, "-m", "stages.ingest", "iard"], cwd=repo, env=dict(env, REFICR_DEBUG="1"),
                           capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert not (repo / "data/interim/iard").exists()


def test_reficr_recommend_checks_its_input_before_any_model(tmp_path):
    """Each bad input is reported (every bad line at once) before a model would load: there is none here."""
    reficr = str(Path(PYTHON).parent / "reficr")
    good = json.dumps({"context": [{"speaker": "seeker", "text": "hi"}]})
    cases = {
        "missing.jsonl": (None, "missing.jsonl: cannot be read (No such file or directory)"),
        "latin1.jsonl": (good.encode() + b"\n\xe9\n", "latin1.jsonl: cannot be read (byte"),
        "bad.jsonl": ("{not json\n[1, 2]\n" + json.dumps({"context": [{"speaker": "bot", "text": "x"}]}) + "\n",
                      "3 problem(s), nothing was run"),
        "empty.jsonl": ("\n\n", "no conversations in it"),
    }
    for name, (content, says) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
        done = subprocess.run([reficr, "recommend", "--input", str(path), "--output", str(tmp_path / "out.jsonl"),
                               "--root", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 2, (name, done.stderr)
        assert says in done.stderr and done.stderr.startswith("error: ") and "Traceback" not in done.stderr, (name, done.stderr)
        if name == "bad.jsonl":
            assert "line 1: (the line): Invalid JSON" in done.stderr and "line 2: (the line): Input should be" in done.stderr
            assert "line 3: context.0.speaker" in done.stderr
        assert not (tmp_path / "out.jsonl").exists()
    path = tmp_path / "ok.jsonl"
    path.write_text(good + "\n")
    done = subprocess.run([reficr, "recommend", "--input", str(path), "--output", str(tmp_path / "out.jsonl"),
                           "--root", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "`dvc repro evaluate@redial` makes it" in done.stderr and "Traceback" not in done.stderr


def test_ingest_log_limits_default_to_the_params():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["data"]
    assert IngestLog.max_utterance_chars == params["max_utterance_chars"]
    assert IngestLog.max_record_chars == params["max_record_chars"]
