"""LAMA T-REx loading: real files from the data root, deterministic distractors, errors, download path."""

from __future__ import annotations

import collections
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from lm_eval_calib.data import lama
from lm_eval_calib.data.lama import (
    COLUMNS,
    RELATIONS,
    download_atomic,
    load_folder,
    load_lama,
    load_local,
    relation_ids,
    split_template,
)
from lm_eval_calib.data.root import DATA_ENV, DataNotFoundError

REPO = Path(__file__).resolve().parents[2]

SUFFIX_RELATIONS = {
    "P27": " citizen",
    "P106": " by profession",
    "P136": " music",
    "P140": " religion",
    "P190": " are twin cities",
    "P413": " position",
}


@pytest.fixture(scope="module")
def facts(data_root):
    return load_local(data_root)["test"].to_list()


@pytest.fixture(scope="module")
def distinct_objects(facts):
    objects = collections.defaultdict(set)
    for row in facts:
        objects[row["relation"]].add(row["object"])
    return objects


def _copy(data_root: Path, target: Path, relations) -> Path:
    (target / "lama_trex" / "facts").mkdir(parents=True)
    shutil.copy(data_root / "lama_trex" / "relations.jsonl", target / "lama_trex" / "relations.jsonl")
    for relation in relations:
        name = f"facts/{relation}.jsonl"
        shutil.copy(data_root / "lama_trex" / name, target / "lama_trex" / name)
    return target


def test_published_counts_and_columns(data_root, facts):
    assert len(RELATIONS) == 41 and relation_ids(data_root) == list(RELATIONS)
    assert len(facts) == 29411
    counts = collections.Counter(row["relation"] for row in facts)
    assert len(counts) == 41 and counts["P19"] == 779 and counts["P264"] == 53
    assert list(counts) == list(RELATIONS)  # rows grouped by relation, in relations.jsonl order
    assert list(facts[0]) == list(COLUMNS)
    first = facts[0]
    assert (first["relation"], first["relation_label"], first["subject"], first["object"]) == (
        "P19",
        "place of birth",
        "Allan Peiper",
        "Alexandra",
    )
    assert first["prompt"] == "Allan Peiper was born in" and first["suffix"] == ""
    # the 17 exact duplicate (subject, object) lines of the source are kept, each with its own uuid
    pairs = collections.Counter((r["relation"], r["subject"], r["object"]) for r in facts)
    assert sum(n - 1 for n in pairs.values()) == 17
    assert len({r["uuid"] for r in facts}) == 29411


def test_prompt_and_suffix(facts):
    assert split_template("[X] was born in [Y] .") == ("[X] was born in", "")
    assert split_template("[X] is [Y] citizen .") == ("[X] is", " citizen")
    assert split_template("[X] and [Y]  are twin cities .") == ("[X] and", " are twin cities")
    with pytest.raises(ValueError, match="one \\[X\\] before one \\[Y\\]"):
        split_template("[Y] participated in the [X] .")
    suffixes = {r["relation"]: r["suffix"] for r in facts if r["suffix"]}
    assert suffixes == SUFFIX_RELATIONS
    p27 = next(r for r in facts if r["relation"] == "P27")
    assert p27["prompt"] == f"{p27['subject']} is"
    for row in facts:
        assert row["prompt"] == row["prompt"].rstrip() and row["subject"] in row["prompt"]
        assert "[X]" not in row["prompt"] and "[Y]" not in row["prompt"]


def test_default_nine_distractors(facts, distinct_objects):
    sizes = collections.Counter()
    for row in facts:
        options, target = row["options"], row["target"]
        assert options[target] == row["object"]
        assert len(set(options)) == len(options)  # no duplicate, so the gold object appears once
        assert set(options) <= distinct_objects[row["relation"]]
        assert len(options) == min(10, len(distinct_objects[row["relation"]]))
        sizes[len(options)] += 1
    # P30 (continent) has 5 distinct objects and P1303 (instrument) 6: all of them are used
    assert sizes == {10: 29411 - 959 - 513, 5: 959, 6: 513}
    assert len(distinct_objects["P30"]) == 5 and len(distinct_objects["P1303"]) == 6
    # the gold object is shuffled into every position, not always first
    targets = collections.Counter(row["target"] for row in facts if len(row["options"]) == 10)
    assert set(targets) == set(range(10)) and max(targets.values()) < 0.12 * sum(targets.values())


def test_all_and_zero_distractors(data_root, distinct_objects):
    rows = load_local(data_root, n_distractors="all", relations=["P30", "P140", "P19"])["test"]
    assert collections.Counter(rows["relation"]) == {"P19": 779, "P30": 959, "P140": 432}
    for row in rows:
        n_objects = len(distinct_objects[row["relation"]])
        assert (
            len(row["options"]) == 1 + (n_objects - 1)
            and set(row["options"]) == distinct_objects[row["relation"]]
        )
        assert row["options"][row["target"]] == row["object"]
    assert len(distinct_objects["P19"]) == 229
    zero = load_local(data_root, n_distractors=0, relations=["P36"])["test"]
    assert all(r["options"] == [r["object"]] and r["target"] == 0 for r in zero)
    three = load_local(data_root, n_distractors=3, relations=["P36"])["test"]
    assert {len(o) for o in three["options"]} == {4}


def test_deterministic_per_fact_and_seed(data_root, facts):
    again = load_local(data_root, relations=["P27", "P19"])["test"].to_list()
    by_uuid = {r["uuid"]: r for r in facts}
    # same options whatever else is loaded, and in a new call
    assert all(r == by_uuid[r["uuid"]] for r in again)
    other = load_local(data_root, seed=7, relations=["P19", "P27"])["test"].to_list()
    changed = sum(set(r["options"]) != set(by_uuid[r["uuid"]]["options"]) for r in other)
    assert changed > 0.9 * len(other)
    assert [r["object"] for r in other] == [r["object"] for r in again]
    assert all(r["options"][r["target"]] == r["object"] for r in other)


def test_argument_validation(data_root):
    with pytest.raises(
        ValueError, match=r"unknown LAMA T-REx relation\(s\) 'P166'.*known relations: P19, P20"
    ):
        load_local(data_root, relations=["P19", "P166"])
    for bad in (-1, True, "some", 1.5, None):
        with pytest.raises(ValueError, match="n_distractors must be an int >= 0 or 'all'"):
            load_local(data_root, n_distractors=bad, relations=["P19"])


def test_missing_files_are_named(data_root, tmp_path):
    with pytest.raises(DataNotFoundError, match="missing relations.jsonl, facts/P19.jsonl, .* and 37 more"):
        load_local(tmp_path)
    root = _copy(data_root, tmp_path / "one", ["P19"])
    assert len(load_local(root, relations=["P19"])["test"]) == 779
    with pytest.raises(DataNotFoundError, match="missing facts/P20.jsonl, .* and 35 more"):
        load_local(root)
    assert load_lama(str(root), relations="P19")["test"]["relation"] == ["P19"] * 779


def test_malformed_line_and_missing_template(data_root, tmp_path):
    root = _copy(data_root, tmp_path, ["P19"])
    facts_path = root / "lama_trex" / "facts" / "P19.jsonl"
    good = facts_path.read_text()
    facts_path.write_text(good + '{"sub_label": "A", "obj_label": \n')
    with pytest.raises(DataNotFoundError, match=r"P19.jsonl: line 780 is not valid JSON"):
        load_local(root, relations=["P19"])
    facts_path.write_text('{"sub_label": "A", "uuid": "u"}\n' + good)
    with pytest.raises(DataNotFoundError, match=r"P19.jsonl: line 1 lacks string field\(s\)"):
        load_local(root, relations=["P19"])
    facts_path.write_text("\n")
    with pytest.raises(DataNotFoundError, match="P19.jsonl: no rows"):
        load_local(root, relations=["P19"])
    facts_path.write_text(good)
    relations_path = root / "lama_trex" / "relations.jsonl"
    lines = relations_path.read_text().splitlines(keepends=True)
    relations_path.write_text("".join(line for line in lines if '"P19"' not in line))
    with pytest.raises(DataNotFoundError, match="relation P19 has no template in"):
        load_local(root, relations=["P19"])


def test_default_source_is_pinned_github():
    urls = lama.source_urls(["P19"])
    assert urls == {
        "relations.jsonl": "https://raw.githubusercontent.com/princeton-nlp/OptiPrompt/"
        "9450bc96f28ac3df01337c79be079a2ac3defb5c/relation_metainfo/LAMA_relations.jsonl",
        "facts/P19.jsonl": "https://raw.githubusercontent.com/yanaiela/pararel/"
        "cb5554678457beb5ac163d888f1ce8cf174b3f0b/data/trex_lms_vocab/P19.jsonl",
    }
    assert len(lama.source_urls()) == 42


def test_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(lama.CACHE_ENV, str(tmp_path))
    assert lama.cache_dir() == tmp_path / "lama_trex"
    monkeypatch.delenv(lama.CACHE_ENV)
    assert lama.cache_dir() == Path.home() / ".cache" / "lm_eval_calib" / "lama_trex"


def test_download_failure_explains_offline_route(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv(lama.CACHE_ENV, str(tmp_path))
    # stands in for the unreachable GitHub: no network is tried in the tests
    monkeypatch.setattr(lama, "RELATIONS_URL", (tmp_path / "nowhere" / "LAMA_relations.jsonl").as_uri())
    with pytest.raises(DataNotFoundError, match=f"could not download .*{DATA_ENV}=ROOT or --metadata"):
        load_lama(None, relations=["P19"])
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing half-written left behind


def test_download_then_load_from_cache(data_root, monkeypatch, tmp_path):
    """The whole default path, with file:// URLs of the verbatim copies standing in for GitHub."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv(lama.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(lama, "RELATIONS_URL", (data_root / "lama_trex" / "relations.jsonl").as_uri())
    monkeypatch.setattr(lama, "FACTS_URL", (data_root / "lama_trex" / "facts").as_uri())
    downloaded = load_lama(None, relations=["P27", "P140"])["test"]
    assert downloaded.to_list() == load_local(data_root, relations=["P27", "P140"])["test"].to_list()
    cached = sorted(p.relative_to(tmp_path / "cache") for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert [str(p) for p in cached] == [
        "lama_trex/facts/P140.jsonl",
        "lama_trex/facts/P27.jsonl",
        "lama_trex/relations.jsonl",
    ]
    # cached files are used as they are: no second download
    monkeypatch.setattr(lama, "FACTS_URL", (tmp_path / "nowhere").as_uri())
    assert len(load_lama(None, relations=["P140"])["test"]) == 432
    assert len(load_folder(tmp_path / "cache" / "lama_trex", relations=["P27"])["test"]) == 958


def test_atomic_download_never_leaves_partial_file(data_root, monkeypatch, tmp_path):
    source = data_root / "lama_trex" / "facts" / "P19.jsonl"
    dest = tmp_path / "sub" / "P19.jsonl"
    assert download_atomic(source.as_uri(), dest) == dest and dest.read_bytes() == source.read_bytes()

    def interrupted(src, dst, *args, **kwargs):
        dst.write(src.read(1000))
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the transfer

    other = tmp_path / "sub" / "P20.jsonl"
    monkeypatch.setattr(lama.shutil, "copyfileobj", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download_atomic((data_root / "lama_trex" / "facts" / "P20.jsonl").as_uri(), other)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["P19.jsonl"]
    monkeypatch.undo()
    with pytest.raises(OSError):
        download_atomic((tmp_path / "missing.jsonl").as_uri(), other)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["P19.jsonl"]


@pytest.mark.parametrize("relations", [[], (), 5, [1], ["P19", None], {"P19": 1}])
def test_relations_option_must_list_relations(relations, data_root):
    """``relations: []`` crashed inside `datasets` with an IndexError naming nothing."""
    with pytest.raises(ValueError, match=r"relations (is an empty list|must be a relation id)"):
        load_local(data_root, relations=relations)
    with pytest.raises(ValueError, match=r"relations (is an empty list|must be a relation id)"):
        load_lama(str(data_root), relations=relations)


def _single_object_relation(data_root: Path, target: Path, n_objects: int) -> Path:
    """P30 (continent) cut to its facts about the first ``n_objects`` objects."""
    root = _copy(data_root, target, ["P30"])
    path = root / "lama_trex" / "facts" / "P30.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    keep = sorted({json.loads(line)["obj_label"] for line in lines})[:n_objects]
    path.write_text("".join(line for line in lines if json.loads(line)["obj_label"] in keep))
    return root


@pytest.mark.parametrize("n_distractors", [1, 9, "all"])
def test_one_option_facts_are_refused_for_multiple_choice(n_distractors, data_root, tmp_path):
    root = _single_object_relation(data_root, tmp_path, 1)
    with pytest.raises(ValueError) as info:
        load_local(root, n_distractors=n_distractors, relations=["P30"], min_options=2)
    message = str(info.value)
    assert "P30.jsonl: relation P30 has 1 distinct object(s)" in message and "at least 2" in message
    # the open-vocabulary task does not score options: one per fact is fine there
    assert len(load_local(root, n_distractors=n_distractors, relations=["P30"])["test"]) > 0
    two = _single_object_relation(data_root, tmp_path / "two", 2)
    rows = load_local(two, n_distractors=n_distractors, relations=["P30"], min_options=2)["test"]
    assert {len(options) for options in rows["options"]} == {2}


def test_zero_distractors_are_refused_before_reading(tmp_path):
    with pytest.raises(ValueError, match=r"n_distractors=0 gives every fact 1 option\(s\).*at least 2"):
        load_lama(str(tmp_path / "missing"), n_distractors=0, min_options=2)  # no data needed to say so


def _facts_utils():
    spec = importlib.util.spec_from_file_location("_calib_facts_utils", REPO / "tasks" / "facts" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("facts", [0, False, "", [], "n_distractors=3", 5])
def test_facts_metadata_must_be_a_mapping(facts, data_root):
    with pytest.raises(ValueError, match="--metadata 'facts' must be a mapping"):
        _facts_utils().load_dataset(data_dir=str(data_root), facts=facts)


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        ({"relations": []}, "relations is an empty list"),
        ({"n_distractors": 0}, "n_distractors=0 gives every fact 1 option"),
        ({"n_distractors": -2}, "n_distractors must be an int >= 0"),
        ({"relations": ["P19"], "n_distractor": 3}, "unknown facts option(s) 'n_distractor'"),
    ],
)
def test_facts_task_options_are_named(facts, message, data_root):
    with pytest.raises(ValueError) as info:
        _facts_utils().load_dataset(data_dir=str(data_root), facts=facts)
    assert message in str(info.value)


@pytest.mark.parametrize("seed", [1234.0, 1.5, "1234", True, None, [1]])
def test_seed_must_be_an_integer(seed, data_root, tmp_path):
    """``1234.0`` hashed as text gave other options than ``1234``: every non-integer seed is refused, before
    any file is read, by the loader and through the task's ``--metadata facts``."""
    with pytest.raises(ValueError, match=r"seed must be an integer.*got"):
        load_lama(str(tmp_path / "missing"), seed=seed, relations=["P19"])
    with pytest.raises(ValueError, match=r"calib_facts option.*seed must be an integer"):
        _facts_utils().load_dataset(data_dir=str(data_root), facts={"seed": seed, "relations": ["P19"]})


def test_integer_seeds_of_any_integer_type_give_the_same_options(data_root):
    import numpy as np

    plain = load_local(data_root, seed=7, relations=["P30"])["test"]["options"]
    assert load_local(data_root, seed=np.int64(7), relations=["P30"])["test"]["options"] == plain


def test_open_task_keeps_one_option_per_fact(data_root):
    utils = _facts_utils()
    rows = utils.load_open_dataset(data_dir=str(data_root), facts={"relations": ["P30"]})["test"]
    assert len(rows) == 959 and all(len(options) == 1 for options in rows["options"])
    with pytest.raises(ValueError, match="relations is an empty list"):
        utils.load_open_dataset(data_dir=str(data_root), facts={"relations": []})
