"""scripts/profile/detr_torch_ops.py at a small image size: both sides run under the profiler and
each prints its ops, the largest first (the figures need an idle machine and 480x640)."""

import re

import pytest

from tests.scripts.support import load

pytest.importorskip("transformers")


@pytest.mark.backends("torch")
def test_lists_each_sides_ops_largest_first(capsys):
    script = load("profile/detr_torch_ops.py")
    assert script.main(["--dc5", "--height", "64", "--width", "96", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    sections = re.split(r"\n(?=transformers: |kzoo: )", out.strip())
    assert [s.split(":")[0] for s in sections] == ["transformers", "kzoo"]
    for section in sections:
        header, *rows = section.splitlines()
        total = float(re.search(r"([\d.]+) ms of op self time", header).group(1))
        times = [float(row.split()[0]) for row in rows]
        # Each row: milliseconds, "ms", a dispatcher op name (aten::..., mkldnn::...).
        assert rows and all("::" in row.split()[2] for row in rows)
        assert times == sorted(times, reverse=True) and 0 < sum(times) <= total + 0.01
        # Both run ResNet-50's convolutions (kzoo's with their ReLU and sum fused on the CPU).
        assert any("convolution" in row for row in rows)
