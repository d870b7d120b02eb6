"""CITATION.cff is valid Citation File Format 1.2.0 (the schema ``cffconvert --validate`` uses,
tests/fixtures/cff) and says what the README's BibTeX says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "tests" / "fixtures" / "cff" / "schema-1.2.0.json").read_text())


def citation() -> dict:
    # CFF is YAML 1.2; PyYAML would read an unquoted date as a date, which the schema's strings
    # refuse, as cffconvert (ruamel.yaml) would read it as a string: none is written unquoted.
    return yaml.safe_load((REPO / "CITATION.cff").read_text())


def errors(document: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_the_citation_file_is_valid_cff():
    assert errors(citation()) == []


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("authors"),
        lambda d: d["preferred-citation"].update(type="paper"),
        lambda d: d["preferred-citation"].update(doi="arXiv:2402.02327"),
        lambda d: d.update(cff_version="1.2.0"),
    ],
    ids=["no authors", "unknown type", "not a DOI", "unknown key"],
)
def test_the_check_finds_what_is_not_cff(change):
    document = citation()
    change(document)
    assert errors(document)


def test_the_citation_names_this_version_and_the_papers_bibtex():
    document = citation()
    # tomllib is 3.11's; the suite runs on 3.10 too.
    pyproject = (REPO / "pyproject.toml").read_text()
    project = dict(re.findall(r'^(version|license) = "(.*)"$', pyproject, re.M))
    assert document["version"] == project["version"]
    assert document["license"] == project["license"]
    paper = document["preferred-citation"]
    assert paper["title"] == "Bootstrapping Audio-Visual Segmentation by Strengthening Audio Cues"
    assert paper["doi"] == "10.48550/arXiv.2402.02327" and paper["year"] == 2024
    readme = (REPO / "README.md").read_text()
    bibtex = readme[readme.index("```bibtex") : readme.index("```", readme.index("```bibtex") + 3)]
    entry = bibtex[bibtex.index("@article{chen2024avsac") :]
    families = [author["family-names"] for author in paper["authors"]]
    listed = re.search(r"author\s*=\s*\{(.*?)\},\n", entry, re.S).group(1)
    assert [name.split(",")[0].strip() for name in re.split(r"\s+and\s+", listed)] == families
    assert f"doi     = {{{paper['doi']}}}" in entry and f"year    = {{{paper['year']}}}" in entry
    assert f"version = {{{document['version']}}}" in bibtex
