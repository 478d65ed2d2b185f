"""The versioned sample suite: shape, coverage of forms and requests, loading rules."""
import json

import pytest

from quill.config import REFERENCE_PROMPTS
from quill.evaluate.suite import load_suite


def test_default_suite_is_v1_with_reference_prompts_and_coverage():
    s = load_suite()
    assert s.name == "suite_v1" and s.version == 1
    assert len(s.prompts) >= 22
    assert [p.prompt for p in s.quick().prompts] == REFERENCE_PROMPTS
    assert s.quick().prompts[0].mode == "raw"
    forms = {p.checks.get("form") for p in s.prompts}
    assert {"couplets", "quatrain", "sonnet", "haiku", "limerick", "free"} <= forms
    assert any(p.prompt.lower().startswith("continue this poem") for p in s.prompts)
    assert any("style of" in p.prompt for p in s.prompts)
    assert any(p.checks.get("lines") and not p.checks.get("form") for p in s.prompts)


def test_extra_prompts_appended_once_and_none_suite():
    s = load_suite("default", extra_prompts=REFERENCE_PROMPTS + ["Sing of bees"])
    assert len(s.prompts) == len(load_suite().prompts) + 1
    only = load_suite(None, extra_prompts=["Sing of bees"])
    assert [p.prompt for p in only.prompts] == ["Sing of bees"]


def test_bad_suites_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown eval suite"):
        load_suite("suite_v99")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "b", "version": 1,
                               "prompts": [{"id": "x", "prompt": "p", "checks": {"form": "villanelle"}}]}))
    with pytest.raises(ValueError, match="unknown form"):
        load_suite(str(bad))
