"""docs/schemas.md's classification table names exactly the columns of schema.classify_schema."""
from __future__ import annotations

import re
from pathlib import Path

from alle_dist import schema

DOC = Path(__file__).resolve().parents[3] / "docs" / "schemas.md"


def test_the_documented_classification_columns_are_the_schema_columns():
    text = DOC.read_text()
    section = text[text.index("## Bulk classification table"):]
    section = section[:section.index("### Run records")]
    documented = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            documented.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    cols = set(schema.classify_schema(["<class>"], ["<backbone>"]).names)
    assert documented == cols, (sorted(cols - documented), sorted(documented - cols))
