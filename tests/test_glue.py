"""Tests for utils.glue: task table, strict TSV loading, hub fallback, the real files."""
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import utils.glue as glue_module
from tests.runner_helpers import REAL_GLUE, needs_real_glue
from utils.glue import TASKS, DataNotFoundError, GlueFormatError, get_task, load_glue, read_tsv

# ---------------------------------------------------------------- fixtures: one per file format
# Each task: {relative file: content}, and the expected parse {split: (sentence1, sentence2, label)}.
# Every folder also gets a malformed test.tsv, which must never be read.
MNLI_HEAD_TRAIN = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                   "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")
MNLI_HEAD_DEV = MNLI_HEAD_TRAIN.replace("label1\t", "label1\tlabel2\tlabel3\tlabel4\tlabel5\t")
STSB_HEAD = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


def _mnli_row(i, s1, s2, gold, n_annot):
    return "\t".join([str(i), "31193", f"{i}n", "fiction", "( b )", "( b )", "(R b)", "(R b)", s1, s2,
                      *[gold] * n_annot, gold]) + "\n"


FIXTURES = {
    "cola": {  # no header; 4 columns; empty author mark; dev has no final newline
        "train.tsv": 'gj04\t1\t\tThe sailors rode the breeze.\nedu\t0\t*\tHe said " hi.\n',
        "dev.tsv": "cj99\t0\t*?\tBill about himself.\ncj99\t1\t \tBill left.",
    },
    "sst2": {  # trailing space before the tab is kept; bare quotes do not merge rows
        "train.tsv": 'sentence\tlabel\nit \'s a " charming film \t1\nbye " she said \t0\n',
        "dev.tsv": "sentence\tlabel\nbleak \t0\n",
    },
    "mrpc": {  # UTF-8 BOM before the header
        "train.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                     '1\t702876\t702977\the called " the witness " .\tas " the witness " .\n'
                     "0\t2108705\t2108831\tYucaipa owned it .\tYucaipa bought it .\n",
        "dev.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA .\tB .\n",
    },
    "qqp": {
        "train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                     "0\t1\t2\tHow do I cook?\tHow to cook?\t1\n1\t3\t4\tWhy?\tWhy not?\t0\n",
        "dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t5\t6\tA?\tB?\t0\n",
    },
    "stsb": {  # 10 columns, float score in the last one
        "train.tsv": STSB_HEAD + "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\t"
                                 "A plane is taking off.\tAn air plane is taking off.\t5.000\n"
                                 "1\tmain-news\theadlines\t2013\t0004\tnone\tnone\tA man.\tA flute.\t3.800\n",
        "dev.tsv": STSB_HEAD + "0\tmain-forums\tdeft\t2014\t0000\tnone\tnone\tX.\tY.\t0.000\n",
    },
    "mnli": {  # train: 12 columns; dev files: 16 columns (5 annotator labels)
        "train.tsv": MNLI_HEAD_TRAIN + _mnli_row(0, "P0.", "H0.", "neutral", 1)
                     + _mnli_row(1, "P1.", "H1.", "contradiction", 1),
        "dev_matched.tsv": MNLI_HEAD_DEV + _mnli_row(2, "P2.", "H2.", "entailment", 5),
        "dev_mismatched.tsv": MNLI_HEAD_DEV + _mnli_row(3, "P3.", "H3.", "contradiction", 5),
    },
    "qnli": {  # string labels
        "train.tsv": "index\tquestion\tsentence\tlabel\n0\tWhat?\tThis.\tnot_entailment\n",
        "dev.tsv": "index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tentailment\n",
    },
    "rte": {  # string labels; HF ids: entailment 0, not_entailment 1
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tNo WMD found.\tWMD found.\tnot_entailment\n"
                     "1\tA pope died.\tA pope is dead.\tentailment\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n",
    },
    "wnli": {  # numeric labels: 1 = entailment
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin.\tIt had a hole.\t1\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tThe drain.\tThe hair.\t0\n",
    },
}
EXPECTED = {
    "cola": {"train": (["The sailors rode the breeze.", 'He said " hi.'], None, [1, 0]),
             "dev": (["Bill about himself.", "Bill left."], None, [0, 1])},
    "sst2": {"train": (["it 's a \" charming film ", 'bye " she said '], None, [1, 0]),
             "dev": (["bleak "], None, [0])},
    "mrpc": {"train": (['he called " the witness " .', "Yucaipa owned it ."],
                       ['as " the witness " .', "Yucaipa bought it ."], [1, 0]),
             "dev": (["A ."], ["B ."], [1])},
    "qqp": {"train": (["How do I cook?", "Why?"], ["How to cook?", "Why not?"], [1, 0]),
            "dev": (["A?"], ["B?"], [0])},
    "stsb": {"train": (["A plane is taking off.", "A man."],
                       ["An air plane is taking off.", "A flute."], [5.0, 3.8]),
             "dev": (["X."], ["Y."], [0.0])},
    "mnli": {"train": (["P0.", "P1."], ["H0.", "H1."], [1, 2]),
             "dev_matched": (["P2."], ["H2."], [0]), "dev_mismatched": (["P3."], ["H3."], [2])},
    "qnli": {"train": (["What?"], ["This."], [1]), "dev": (["Who?"], ["Him."], [0])},
    "rte": {"train": (["No WMD found.", "A pope died."], ["WMD found.", "A pope is dead."], [1, 0]),
            "dev": (["A."], ["B."], [0])},
    "wnli": {"train": (["I stuck a pin."], ["It had a hole."], [1]),
             "dev": (["The drain."], ["The hair."], [0])},
}


def write_task(root: Path, task: str, files: dict | None = None) -> Path:
    folder = root / TASKS[task].folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.tsv").write_text("garbage\twithout\tlabels\n\"\n")
    for name, content in (FIXTURES[task] if files is None else files).items():
        (folder / name).write_bytes(content.encode("utf-8"))
    return folder


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_format_parses_exactly(tmp_path, task):
    write_task(tmp_path, task)
    data = load_glue(task, tmp_path)
    assert data.source == f"local:{tmp_path.resolve()}"
    splits = {"train": data.train, **data.dev}
    assert list(data.dev) == list(TASKS[task].dev_splits)
    assert set(splits) == set(EXPECTED[task])
    for split, (s1, s2, labels) in EXPECTED[task].items():
        want = {"sentence1": s1, "label": labels} | ({"sentence2": s2} if s2 else {})
        assert splits[split].to_dict() == want
        assert data.num_rows[split] == len(labels)
        assert data.files[split].startswith(str(tmp_path.resolve() / TASKS[task].folder))
    label_type = "float64" if task == "stsb" else "int64"
    assert data.train.features["label"].dtype == label_type


def test_glue_dir_env_and_explicit_dir_precedence(tmp_path, monkeypatch):
    write_task(tmp_path / "env", "rte")
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "env"))
    assert load_glue("rte").source == f"local:{(tmp_path / 'env').resolve()}"
    write_task(tmp_path / "explicit", "rte")
    assert load_glue("RTE", tmp_path / "explicit").source.endswith("explicit")


# ---------------------------------------------------------------- strict parsing errors
RTE_HEAD = "index\tsentence1\tsentence2\tlabel\n"
BAD = [  # (task, content of dev.tsv, line number, message part)
    ("rte", RTE_HEAD + "0\tA.\tB.\tentailment\n1\tA.\tentailment\n", 3, "expected 4 tab-separated columns, got 3"),
    ("rte", RTE_HEAD + "0\tA.\tB.\tentailed\n", 2, "unknown label 'entailed'"),
    ("rte", RTE_HEAD + "0\tA.\tB.\tentailment\t\n", 2, "expected 4 tab-separated columns, got 5"),
    ("rte", RTE_HEAD + "0\t \tB.\tentailment\n", 2, "empty text in column 'sentence1'"),
    ("rte", "index\tsentence1\tsentence2\n0\tA.\tB.\n", 1, "lacks column(s) ['label']"),
    ("stsb", STSB_HEAD + "0\tg\tf\ty\ti\ts\ts\tA.\tB.\tn/a\n", 2, "score 'n/a' is not a number"),
    ("stsb", STSB_HEAD + "0\tg\tf\ty\ti\ts\ts\tA.\tB.\t1.0\n1\tg\tf\ty\ti\ts\ts\tA.\tB.\tnan\n", 3,
     "score 'nan' is not finite"),
    ("sst2", "sentence\tlabel\ngood \t1\n\t0\n", 3, "empty text in column 'sentence'"),
    ("sst2", "sentence\tlabel\ngood \t1\nbad \t-1\n", 3, "unknown label '-1'"),
    ("cola", "gj04\t1\t\tFine.\ngj04\t2\t\tBad label.", 2, "unknown label '2'"),
    ("cola", "gj04\t1\tFine.\n", 1, "expected 4 tab-separated columns, got 3"),
    ("mrpc", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA .\n", 2, "got 4"),
]


@pytest.mark.parametrize("task,content,line,message", BAD)
def test_bad_rows_name_file_and_line(tmp_path, task, content, line, message):
    files = dict(FIXTURES[task], **{"dev.tsv": content})
    path = write_task(tmp_path, task, files) / "dev.tsv"
    with pytest.raises(GlueFormatError) as err:
        load_glue(task, tmp_path)
    assert f"{path}:{line}: " in str(err.value)
    assert message in str(err.value)


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"sentence\tlabel\nok \t1\nbad \xff\t0\n")
    with pytest.raises(GlueFormatError, match=r"dev\.tsv:3: not valid UTF-8"):
        read_tsv(path, "sst2")


def test_blank_lines_skipped_and_crlf_accepted(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes(b"sentence\tlabel\r\na \t1\r\n\r\nb \t0\n\n")
    assert read_tsv(path, "sst2") == {"sentence1": ["a ", "b "], "label": [1, 0]}


st_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"),
                  min_size=1, max_size=20).filter(str.strip)


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.tuples(st_text, st_text, st.sampled_from(["entailment", "not_entailment"])),
                     min_size=1, max_size=8), final_newline=st.booleans())
def test_roundtrip_any_text(tmp_path_factory, rows, final_newline):
    path = tmp_path_factory.mktemp("rt") / "dev.tsv"
    body = "\n".join(f"{i}\t{a}\t{b}\t{lab}" for i, (a, b, lab) in enumerate(rows))
    path.write_bytes((RTE_HEAD + body + "\n" * final_newline).encode("utf-8"))
    got = read_tsv(path, "rte")
    assert got == {"sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows],
                   "label": [TASKS["rte"].label_map[r[2]] for r in rows]}


# ---------------------------------------------------------------- missing data, hub
def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataNotFoundError, match="does not exist") as err:
        load_glue("cola", missing)
    assert str(missing) in str(err.value) and "CoLA/train.tsv" in str(err.value)


def test_missing_file(tmp_path):
    write_task(tmp_path, "mnli", {"train.tsv": FIXTURES["mnli"]["train.tsv"],
                                  "dev_matched.tsv": FIXTURES["mnli"]["dev_matched.tsv"]})
    with pytest.raises(DataNotFoundError) as err:
        load_glue("mnli", tmp_path)
    assert f"expected file {tmp_path / 'MNLI' / 'dev_mismatched.tsv'} is missing" in str(err.value)


@pytest.fixture
def no_local_glue(monkeypatch, tmp_path):
    """Neither GLUE_DIR nor a shared/glue folder beside the repo: load_glue goes to the hub."""
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(glue_module, "SHARED_GLUE", tmp_path / "no_shared_glue")


def _no_data_message_parts(msg):
    for part in ("nyu-mll/glue", "'rte'", "--data-dir", "GLUE_DIR", "RTE/train.tsv", "../shared/glue"):
        assert part in msg


def test_hub_load_error_message(no_local_glue, monkeypatch):
    def failing(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(glue_module, "hub_unreachable", lambda: None)  # the hub answers, the load then fails
    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DataNotFoundError) as err:
        load_glue("rte")
    _no_data_message_parts(str(err.value))
    assert "ConnectionError" in str(err.value)
    assert isinstance(err.value.__cause__, ConnectionError)


@pytest.mark.parametrize("offline", [None, "HF_DATASETS_OFFLINE"])
def test_unreachable_hub_fails_at_once_without_retries(no_local_glue, monkeypatch, offline):
    """No network (or offline mode): one error within the probe's timeout, the hub client never called."""
    import socket

    def no_network(address, timeout=None):
        assert timeout is not None and timeout <= 5
        raise OSError("Network is unreachable")

    def never(*args, **kwargs):
        raise AssertionError("load_dataset called although the hub is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(datasets, "load_dataset", never)
    if offline:
        monkeypatch.setenv(offline, "1")
    with pytest.raises(DataNotFoundError) as err:
        load_glue("rte")
    msg = str(err.value)
    _no_data_message_parts(msg)
    assert ("offline mode is set" if offline else "Network is unreachable") in msg
    assert msg.count("--data-dir") == 1


def test_shared_glue_beside_the_repo_is_found_and_recorded_relative(monkeypatch, tmp_path):
    shared = tmp_path / "shared" / "glue"
    shared.mkdir(parents=True)
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(glue_module, "SHARED_GLUE", shared)
    monkeypatch.chdir(tmp_path / "shared")
    assert glue_module.local_data_dir() == (shared, "glue")
    monkeypatch.setenv("GLUE_DIR", "elsewhere")  # GLUE_DIR comes first, relative to the working directory
    assert glue_module.local_data_dir() == (tmp_path / "shared" / "elsewhere", "$GLUE_DIR")


def test_hub_columns_are_normalised(no_local_glue, monkeypatch):
    monkeypatch.setattr(glue_module, "hub_unreachable", lambda: None)
    calls = []

    def fake(name, config, split):
        calls.append((name, config, split))
        feats = datasets.Features({"premise": datasets.Value("string"),
                                   "hypothesis": datasets.Value("string"),
                                   "label": datasets.ClassLabel(names=list(TASKS["mnli"].label_names)),
                                   "idx": datasets.Value("int32")})
        return [datasets.Dataset.from_dict({"premise": [f"P {s}"], "hypothesis": ["H"], "label": [2],
                                            "idx": [0]}, features=feats) for s in split]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = load_glue("mnli")
    assert calls == [("nyu-mll/glue", "mnli", ["train", "validation_matched", "validation_mismatched"])]
    assert data.source == "hub:nyu-mll/glue"
    assert data.dev["dev_mismatched"].to_dict() == {"sentence1": ["P validation_mismatched"],
                                                    "sentence2": ["H"], "label": [2]}
    assert data.num_rows == {"train": 1, "dev_matched": 1, "dev_mismatched": 1}


# ---------------------------------------------------------------- task table
def test_task_table():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    main = {t.name: t.main_metric for t in TASKS.values()}
    assert main == {"cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "qqp": "f1", "stsb": "pearson",
                    "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    for t in TASKS.values():
        assert t.main_metric in t.metrics and hash(t)
        if not t.is_regression:
            assert sorted(t.label_map.values()) == list(range(t.num_labels)) == list(range(len(t.label_names)))
    assert TASKS["rte"].label_map == {"entailment": 0, "not_entailment": 1}
    assert TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert TASKS["stsb"].num_labels == 1 and TASKS["stsb"].label_map is None
    assert TASKS["mnli"].dev_splits == ("dev_matched", "dev_mismatched")
    assert [t.title for t in TASKS.values()] == ["CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE", "WNLI"]


def test_get_task():
    assert get_task("SST-2") is TASKS["sst2"] and get_task("STS-B") is TASKS["stsb"]
    assert get_task(TASKS["rte"]) is TASKS["rte"]
    with pytest.raises(ValueError, match="unknown GLUE task 'squad'.*cola, sst2, mrpc"):
        get_task("squad")


# ---------------------------------------------------------------- the real files
@needs_real_glue
def test_real_glue_counts():
    counts = {"cola": (8551, 1043), "mrpc": (3668, 408), "rte": (2490, 277), "sst2": (67349, 872),
              "stsb": (5749, 1500), "wnli": (635, 71)}
    loaded = {}
    for name, (n_train, n_dev) in counts.items():
        loaded[name] = data = load_glue(name, REAL_GLUE)
        assert data.num_rows == {"train": n_train, "dev": n_dev}
        assert (len(data.train), len(data.dev["dev"])) == (n_train, n_dev)
    assert Counter(loaded["mrpc"].dev["dev"]["label"]) == {0: 129, 1: 279}
    assert Counter(loaded["rte"].dev["dev"]["label"]) == {0: 146, 1: 131}  # 0 = entailment
    assert Counter(loaded["cola"].dev["dev"]["label"]) == {0: 322, 1: 721}
    assert Counter(loaded["sst2"].dev["dev"]["label"]) == {0: 428, 1: 444}
    stsb = loaded["stsb"].train["label"]
    assert (min(stsb), max(stsb), round(float(np.mean(stsb)), 3)) == (0.0, 5.0, 2.701)
    qnli_dev = read_tsv(REAL_GLUE / "QNLI" / "dev.tsv", "qnli")  # QNLI has no train.tsv here
    assert Counter(qnli_dev["label"]) == {0: 2702, 1: 2761}
    with pytest.raises(DataNotFoundError, match="QNLI/train.tsv is missing"):
        load_glue("qnli", REAL_GLUE)
