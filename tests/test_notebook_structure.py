"""Every framework notebook has the contract's skeleton: outline, Setup, one section per pattern with a
broken / fixed / measured / verdict part, debugging steps, Summary and Exercises (../shared/NOTEBOOKS.md)."""

import re
from pathlib import Path

import pytest

SOURCES = Path(__file__).resolve().parent.parent / "notebooks" / "src"
VERDICTS = ("reproduced", "not reproduced on these versions", "article code invalid on these versions", "partly")
FRAMEWORK_NOTEBOOKS = sorted(p for p in SOURCES.glob("0[1-9]_*.py"))


def markdown_text(source: Path) -> str:
    cells = re.split(r"^# %%.*$", source.read_text(), flags=re.M)
    md = []
    for header, body in zip(re.findall(r"^# %%.*$", source.read_text(), flags=re.M), cells[1:]):
        if "[markdown]" in header:
            md.append("\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines()))
    return "\n".join(md)


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
    patterns = [(h, body) for h, body in sections(text) if re.match(r"\d+\. .+\(\d{3}_[0-9a-f]{16}\.txt", h)]
    assert patterns, "no pattern sections headed 'N. <pattern> (<article file>)'"
    for head, body in patterns:
        for part in (() if "debugging" in head.lower() else ("broken", "fixed", "measured")):
            assert re.search(rf"\*\*{part}", body, flags=re.I), f"section {head!r} lacks a **{part}** part"
        verdict = re.search(r"\*\*Verdict:?\*\*:?\s*(.*)", body)
        assert verdict and verdict.group(1).strip(), f"section {head!r} has no verdict line"
        assert verdict.group(1).strip().lower().lstrip("*_ ").startswith(VERDICTS), \
            f"section {head!r}: verdict must start with one of {VERDICTS}, got {verdict.group(1)[:60]!r}"
    outline = re.findall(r"^\d+\. (.+)$", text.split("## ")[0], flags=re.M)
    assert len(outline) >= len(patterns), "the numbered outline must list every section"


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
