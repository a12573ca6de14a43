"""The CLI's tables: display widths (wide and combining characters), clipping, and one table per command."""
from __future__ import annotations

from classifier_client import tables
from classifiers.protocol.wire import ClassificationResponse


def test_table_formatting_widths_and_clipping():
    assert tables.display_width("abc") == 3 and tables.display_width("分析") == 4 and tables.display_width("e\u0301") == 1
    assert tables.clip("a  b\nc", 10) == "a b c"
    assert tables.clip("abcdefghij", 5) == "abcd…" and tables.display_width(tables.clip("分析使用CRISPR", 6)) <= 6
    table = tables.format_table(["NAME", "SCORE"], [["分析", "0.5"], ["abcdef", "0.25"]], right=[1])
    assert table.splitlines() == ["NAME    SCORE", "分析      0.5", "abcdef   0.25"]


def test_classify_table_plain_groups_and_abstain():
    plain = ClassificationResponse.model_validate({"data": [
        {"index": 0, "prediction": "weather", "score": 0.91234, "predictions": [{"label": "weather", "score": 0.91234}, {"label": "sport", "score": 0.08766}]},
    ], "usage": {"total_tokens": 5}})
    assert tables.classify_table(["Will it rain?"], plain).splitlines() == ["INPUT          PREDICTION  SCORE", "Will it rain?  weather     0.912"]
    grouped = ClassificationResponse.model_validate({"data": [
        {"index": 0, "prediction": {"topic": "sport", "tone": "happy"}, "score": {"topic": 0.8, "tone": 0.6},
         "predictions": {"topic": [], "tone": []}, "out_of_scope": {"topic": False, "tone": True}, "oos_score": {"topic": -0.5, "tone": 3.25}},
    ], "usage": {"total_tokens": 5}})
    lines = tables.classify_table([{"image": "https://x/y.jpg"}], grouped).splitlines()
    assert lines[0].split() == ["INPUT", "GROUP", "PREDICTION", "SCORE", "OOS_SCORE", "OUT_OF_SCOPE"]
    assert lines[1].split() == ["[image]", "https://x/y.jpg", "topic", "sport", "0.800", "-0.500", "no"]
    assert lines[2].split() == ["[image]", "https://x/y.jpg", "tone", "happy", "0.600", "3.250", "yes"]


def test_embedding_previews():
    assert tables.preview_embedding([0.1, -0.2, 0.3, 0.4, 0.5]) == "[0.1000, -0.2000, 0.3000, 0.4000, …]"
    assert tables.embedding_dim([0.0] * 384) == "384" and tables.embedding_dim({"float": [0.0] * 8, "binary": [1]}) == "8/1"
    assert tables.preview_embedding({"base64": "AAAA"}) == "base64: AAAA"
    assert tables.embedding_dim("AAAAAAAAAAA=") == "2" and tables.embedding_dim("not base64!") == "-"
