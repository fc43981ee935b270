"""data/*.csv is what tools/data.py makes: a fast slice of every file is regenerated and compared.

What is compared is what the files hold: outcomes, token and event counts, exception classes and
HTTP statuses (no file holds a time). Regenerate with ``.venv/bin/python tools/data.py regen [NAME]``.
"""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_tool():
    """tools/data.py under its own module name (``data`` alone would be the data/ folder)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("streamlab_tools_data", ROOT / "tools" / "data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


data = _load_tool()


def stored(name):
    dataset = data.DATASETS[name]
    return [tuple(row[c] for c in dataset.header) for row in data.read(name)]


def keyed(name, rows):
    dataset = data.DATASETS[name]
    index = [dataset.header.index(c) for c in dataset.key]
    return {tuple(r[i] for i in index): r for r in rows}


def test_every_data_file_is_documented_and_has_a_header():
    readme = (ROOT / "data" / "README.md").read_text()
    on_disk = {p.stem for p in (ROOT / "data").glob("*.csv")}
    assert on_disk - set(data.EXTERNAL) == set(data.DATASETS), "data/ holds exactly the files tools/data.py makes"
    for name in data.EXTERNAL:
        assert f"`{name}.csv`" in readme and f"tools/data.py regen {name}" in readme
    for name, dataset in data.DATASETS.items():
        assert f"`{name}.csv`" in readme and f"tools/data.py regen {name}" in readme
        assert dataset.path.read_text().splitlines()[0] == ",".join(dataset.header)


@pytest.mark.parametrize("name", ["prompts", "answers", "words"])
def test_extracted_files_match_the_sources(name):
    assert stored(name) == data.DATASETS[name].build(), f"data/{name}.csv is stale: tools/data.py regen {name}"


def test_fault_outcomes_cover_every_registered_fault_and_client():
    specs = [f.spec() for f in data.fault_examples()]
    assert set(keyed("fault_outcomes", stored("fault_outcomes"))) == {(s, c) for s in specs for c in data.CLIENTS}


SLICE = [("cut@12", "openai SDK"), ("silent@12", "raw httpx"), ("stall@12=8", "openai SDK"),
         ("ratelimit=1", "raw httpx"), ("malformed@12", "raw httpx")]


def test_fault_outcomes_slice_regenerates_the_same():
    want = keyed("fault_outcomes", stored("fault_outcomes"))
    got = keyed("fault_outcomes", data.build_fault_outcomes(only=SLICE))
    assert set(got) == set(SLICE)
    for key in SLICE:
        assert got[key] == want[key], f"{key}: now {got[key]}, data/fault_outcomes.csv has {want[key]}"


def test_nginx_conformance_covers_every_scenario():
    sys.path.insert(0, str(ROOT / "tests"))
    import test_nginx_conformance as conf

    names = {k[0] for k in keyed("nginx_conformance", stored("nginx_conformance"))}
    assert names == {s.name for s in conf.SCENARIOS}


def test_nginx_conformance_slice_regenerates_the_same():
    from streamlab import nginx_available

    if not nginx_available():
        pytest.skip("real nginx is not installed: data/nginx_conformance.csv was measured with nginx 1.22.1")
    chosen = [("proxy_read_timeout mid-stream",), ("Content-Length upstream body, buffering on",)]
    want = keyed("nginx_conformance", stored("nginx_conformance"))
    got = keyed("nginx_conformance", data.build_nginx_conformance(only=chosen))
    assert len(got) == 4
    for key, row in got.items():
        assert row == want[key], f"{key}: now {row}, data/nginx_conformance.csv has {want[key]}"
