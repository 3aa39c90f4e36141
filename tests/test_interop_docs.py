"""The documented measurement of an external model (docs/interop.md) runs as written."""

from __future__ import annotations

import json
import math
import re
import shutil

import pandas as pd

from backstory.lm.checkpoint import save_model
from backstory.lm.interop import export_model
from tests.tiny_models import REPO, peaked_model, stories, tokenizer

MARKER = "<!-- tested by tests/test_interop_docs.py: keep it runnable -->"


def documented_snippet() -> str:
    text = (REPO / "docs" / "interop.md").read_text()
    after = text[text.index(MARKER) + len(MARKER):]
    return re.search(r"```python\n(.*?)```", after, re.DOTALL).group(1)


def test_measuring_an_external_model_as_documented(tmp_path, monkeypatch, capsys):
    tok = tokenizer()
    texts = stories()
    frame = pd.DataFrame({"story": texts, "split": ["val" if i % 4 == 0 else "train"
                                                    for i in range(len(texts))]})
    parts = tmp_path / "data/02_intermediate/stories"
    parts.mkdir(parents=True)
    frame.to_parquet(parts / "part-0.parquet")
    (tmp_path / "data/08_reporting").mkdir(parents=True)
    (tmp_path / "data/08_reporting/ingest_report.json").write_text(
        json.dumps({"corpus_fingerprint": "storyworld-test"}))
    # The "external" model: a llama2.c export standing in for stories15M.bin.
    export_model(peaked_model(tok, scale=1.0, seed=7), tok, tmp_path / "external",
                 fmt="llama2c")
    (tmp_path / "external/model.bin").rename(tmp_path / "external/stories15M.bin")
    (tmp_path / "external/model.lineage.json").unlink()  # karpathy's files carry none
    save_model(tmp_path / "data/06_models/forward/small/s1337/model", peaked_model(tok, scale=1.0))
    (tmp_path / "data/06_models/tokenizer").mkdir(parents=True)
    (tmp_path / "data/06_models/tokenizer/tokenizer.model").write_bytes(tok.model_bytes)
    shutil.copytree(REPO / "conf", tmp_path / "conf")  # the project folder's settings
    monkeypatch.chdir(tmp_path)
    exec(compile(documented_snippet(), "docs/interop.md", "exec"), {"__name__": "docs"})
    # Only the snippet's own lines: logging set up by other tests may print too.
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith(("stories15M:", "ours:"))]
    figures = {line.split(":")[0]: float(line.split()[1]) for line in lines}
    assert set(figures) == {"stories15M", "ours"}
    assert all(math.isfinite(v) and v > 0 for v in figures.values())
    assert figures["stories15M"] != figures["ours"]  # two different models were scored
