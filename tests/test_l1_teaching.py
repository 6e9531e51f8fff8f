"""Notebook 01's teaching helpers: place-name clues of an address, dropout nodes of a trace, export shape symbols."""

import pytest
import torch

from course_lib.deploy import features
from course_lib.deploy import trace as tracing


def test_area_clues_find_names_in_full_and_short_form_but_not_misspelled():
    got = features.area_clues("西宁市成中区 建设路12号")  # the district is misspelled (城中区), the city is not
    assert got == [{"level": "city", "name": "西宁市", "area": "西北"}]
    assert [(c["level"], c["name"]) for c in features.area_clues("江苏南京鼓楼区中山路")] == [
        ("prov", "江苏"), ("city", "南京"), ("district", "鼓楼区")]
    shanghai = features.area_clues("上海上海市徐汇区漕溪北路88号")  # a municipality: one name, kept as the city
    assert [(c["level"], c["name"]) for c in shanghai] == [("city", "上海市"), ("district", "徐汇区")]
    assert features.area_clues("") == [] and features.area_clues("Tokyo 東京都") == []
    # a district name in several areas is listed once per area
    assert {c["area"] for c in features.area_clues("朝阳区")} == {"华北", "东北"}


class _Drop(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.drop = torch.nn.Linear(4, 4), torch.nn.Dropout(0.3)

    def forward(self, x):
        return self.drop(self.lin(x))


def test_dropout_nodes_of_an_eval_trace_have_train_false_and_freeze_removes_them():
    traced = torch.jit.trace(_Drop().eval(), torch.randn(2, 4))
    df = tracing.dropout_nodes(traced)
    assert list(df.columns) == ["called by", "p", "train"] and len(df) == 1
    assert df["called by"][0] == "drop" and df["p"][0] == pytest.approx(0.3) and not bool(df["train"][0])
    frozen = torch.jit.freeze(traced)
    assert len(tracing.dropout_nodes(frozen.graph)) == 0
    with pytest.raises(TypeError):
        tracing.dropout_nodes("not a graph")


def test_export_shape_symbols_names_the_dynamic_dims_of_each_input():
    class Add(torch.nn.Module):
        def forward(self, a, b):
            return a + b

    batch = torch.export.Dim("batch", max=64)
    ep = torch.export.export(Add(), (torch.randn(3, 5), torch.randn(3, 5)),
                             dynamic_shapes={"a": {0: batch}, "b": {0: batch}})
    shapes = tracing.export_shape_symbols(ep)
    assert set(shapes) == {"a", "b"} and shapes["a"] == shapes["b"]
    assert shapes["a"].startswith("(s") and shapes["a"].endswith(", 5)")


def test_latency_compare_keeps_every_timed_call():
    m = _Drop().eval()
    lat, ratios = tracing.latency_compare(m, torch.jit.trace(m, torch.randn(2, 4)), {2: (torch.randn(2, 4),)},
                                          warmup=1, repeat=4)
    assert [len(t) for t in lat["times_ms"]] == [4, 4] and all(v > 0 for t in lat["times_ms"] for v in t)
    assert set(ratios) == {2}
