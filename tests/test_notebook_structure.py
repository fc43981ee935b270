"""Every framework notebook has the contract's skeleton (notebooks/README.md): outline, Setup, one section
per pattern with a broken / fixed / measured / verdict part citing its article, debugging steps, Summary
and Exercises; every notebook runs on the kernel ``streamlab``."""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "notebooks" / "src"
VERDICTS = ("reproduced", "not reproduced on these versions", "article code invalid on these versions", "partly")
ALL_NOTEBOOKS = sorted(SOURCES.glob("[0-9][0-9]_*.py"))


def article_notebooks() -> set[str]:
    """The stems of the notebooks the README's article table names (the framework notebooks)."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The articles", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("|")]
    return {cells[-1].strip().removesuffix(".ipynb") for cells in rows[2:]}


FRAMEWORK_NOTEBOOKS = [p for p in ALL_NOTEBOOKS if p.stem in article_notebooks()]


def markdown_text(source: Path) -> str:
    cells = re.split(r"^# %%.*$", source.read_text(), flags=re.M)
    md = []
    for header, body in zip(re.findall(r"^# %%.*$", source.read_text(), flags=re.M), cells[1:]):
        if "[markdown]" in header:
            md.append("\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines()))
    return "\n".join(md)


def article_short_titles() -> list[str]:
    """The short titles of the README's article table (``| short title | *full title* | author | date | ...``)."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The articles", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("|")]
    return [cells[0].strip() for cells in rows[2:]]


def sections(text: str) -> list[tuple[str, str]]:
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize("source", FRAMEWORK_NOTEBOOKS, ids=lambda p: p.stem)
def test_framework_notebook_skeleton(source):
    text = markdown_text(source)
    heads = [h for h, _ in sections(text)]
    assert any(h.startswith("Setup") or h.endswith("Setup") for h in heads), "no Setup section"
    assert any("Summary" in h for h in heads), "no Summary section"
    assert any("Exercises" in h for h in heads), "no Exercises section"
    assert any("debugging" in h.lower() for h in heads), "no section with the article's debugging steps"
    cites = "|".join(re.escape(t) for t in article_short_titles())
    cited = re.compile(rf"\d+\. .+\((?:[A-Z][a-z]+, )?(?:{cites})(?:; (?:{cites}))*\)$")
    patterns = [(h, body) for h, body in sections(text) if cited.match(h)]
    assert patterns, "no pattern sections headed 'N. <pattern> (<author>, <short title>)'"
    for head, body in patterns:
        for part in (() if "debugging" in head.lower() else ("broken", "fixed", "measured")):
            assert re.search(rf"\*\*{part}", body, flags=re.I), f"section {head!r} lacks a **{part}** part"
        verdict = re.search(r"\*\*Verdict:?\*\*:?\s*(.*)", body)
        assert verdict and verdict.group(1).strip(), f"section {head!r} has no verdict line"
        assert verdict.group(1).strip().lower().lstrip("*_ ").startswith(VERDICTS), \
            f"section {head!r}: verdict must start with one of {VERDICTS}, got {verdict.group(1)[:60]!r}"
    outline = re.findall(r"^\d+\. (.+)$", text.split("## ")[0], flags=re.M)
    assert len(outline) >= len(patterns), "the numbered outline must list every section"


@pytest.mark.parametrize("source", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_the_common_skeleton(source):
    """Every notebook (incidents, drills, scale too): the question, a numbered outline whose items are the
    section headings, Setup, Summary, Exercises with at least three solution cells tagged ``solution``."""
    text = markdown_text(source)
    intro = text.split("\n## ", 1)[0]
    assert re.search(r"^# \S", intro, flags=re.M), "no title"
    assert "**The question.**" in intro, "no question paragraph"
    heads = [h for h, _ in sections(text)]
    outline = re.findall(r"^\d+\. (.+)$", intro, flags=re.M)
    numbered = [re.sub(r"^\d+\. ", "", h) for h in heads if re.match(r"\d+\. ", h)]
    assert outline and all(any(h.startswith(item.split(" (")[0]) for h in numbered) for item in outline), \
        f"the outline items must be the section headings: {outline} vs {numbered}"
    assert any("Setup" in h for h in heads) and any("Summary" in h for h in heads)
    assert any("Exercises" in h for h in heads)
    solutions = re.findall(r'^# %% tags=\[.*"solution".*\]', source.read_text(), flags=re.M)
    assert len(solutions) >= 3, f"{len(solutions)} solution cells tagged 'solution'; the contract asks for 3+"


REQUIRED_SECTIONS = {
    # issue 4: every pattern of the two AutoGen articles
    "01_autogen": 11,
    "02_langchain": 7,
    "03_crewai": 6,
    "04_langgraph": 6,
}


@pytest.mark.parametrize("stem,count", REQUIRED_SECTIONS.items())
def test_every_required_pattern_section_is_present(stem, count):
    source = SOURCES / f"{stem}.py"
    if not source.exists():
        pytest.skip(f"{stem} not written yet")
    text = markdown_text(source)
    numbered = [h for h, _ in sections(text) if re.match(r"\d+\. ", h)]
    have = {int(h.split(".")[0]) for h in numbered}
    assert set(range(1, count + 1)) <= have, f"{stem}: sections {sorted(set(range(1, count + 1)) - have)} missing"


def test_the_readme_cites_every_article_by_title_author_and_date():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## The articles", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("|")][2:]
    assert len(rows) == 5
    for short, title, author, date, notebook in rows:
        assert title.startswith("*How to Fix") and author and date and (ROOT / "notebooks" / notebook).exists()
    cited = {t for source in FRAMEWORK_NOTEBOOKS for t in article_short_titles() if t in source.read_text()}
    assert cited == set(article_short_titles()), "every article is cited by a notebook"


def test_the_notebook_contract_lives_in_the_repository():
    contract = (ROOT / "notebooks" / "README.md").read_text()
    for part in ("## Skeleton", "Setup", "broken", "fixed", "measured", "verdict", "debugging steps",
                 "Summary", "Exercises", "`solution`", "## Rules", "90 s", "120 s", "Deterministic",
                 "Clean outputs"):
        assert part in contract, f"notebooks/README.md does not name {part!r}"


def test_every_notebook_runs_on_the_streamlab_kernel():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import nb
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert nb.to_notebook(nb.parse(SOURCES / "00_start_here.py")).metadata["kernelspec"]["name"] == "streamlab"
    stored = {p.name: json.loads(p.read_text())["metadata"]["kernelspec"]["name"]
              for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    assert stored and set(stored.values()) == {"streamlab"}, stored


def test_the_streamlab_kernel_is_registered_in_this_venv():
    """nbval starts the kernel the notebook names; tools/install.py registers it inside the venv."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("streamlab")
    assert spec.display_name == "streamlab (.venv)"
    assert Path(spec.argv[0]) == Path(sys.executable)
