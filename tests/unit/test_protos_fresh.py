"""Generated code is never edited by hand: regenerating from protos/ must reproduce gen/python exactly."""

import filecmp

from services.common.protogen import GEN_ROOT, generate


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_generated_code_matches_protos(tmp_path):
    generate(tmp_path)
    fresh, committed = _files(tmp_path), _files(GEN_ROOT)
    assert fresh == committed, "gen/python is stale: run `make protos` and commit the result"
    stale = [str(f) for f in fresh if not filecmp.cmp(tmp_path / f, GEN_ROOT / f, shallow=False)]
    assert not stale, f"gen/python is stale ({', '.join(stale)}): run `make protos` and commit the result"
