import math

from population.summary import parse_summary, tail

LOG = """step 00953 (100.0%) | loss: 2.9 | lrm: 0.00
---
val_bpb: 9.9
---
val_bpb:          0.997900
training_seconds: 300.1
peak_vram_mb:     45060.2
num_steps:        953
depth:            8
"""


def test_parses_the_last_block_only():
    found = parse_summary(LOG)
    assert found["val_bpb"] == 0.9979
    assert found["num_steps"] == 953.0
    assert set(found) == {"val_bpb", "training_seconds", "peak_vram_mb", "num_steps", "depth"}


def test_keys_filter():
    assert parse_summary(LOG, keys=("val_bpb", "depth", "absent")) == {"val_bpb": 0.9979, "depth": 8.0}


def test_garbage_and_non_numeric_lines_are_ignored():
    text = "---\nval_bpb: 1.25\nwarning: something odd\nno colon here\n: 3\ngpu: H100 80GB\nnum_steps: 12\r\n"
    assert parse_summary(text) == {"val_bpb": 1.25, "num_steps": 12.0}


def test_no_block_gives_empty_dict():
    assert parse_summary("Traceback (most recent call last):\n  boom\n") == {}
    assert parse_summary("") == {}
    assert parse_summary("----\nval_bpb: 1.0\n") == {}  # not exactly ---


def test_block_with_crlf_separator_and_nan():
    found = parse_summary("x\r\n---\r\nval_bpb: nan\r\ndepth: 4\r\n")
    assert math.isnan(found["val_bpb"]) and found["depth"] == 4.0


def test_tail():
    text = "\n".join(str(i) for i in range(100))
    assert tail(text, 3) == "97\n98\n99"
    assert tail("a\nb", 10) == "a\nb"
    assert tail("a\nb", 0) == ""
