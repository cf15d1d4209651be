"""When a built dataset counts as fresh: the hub revision is compared only when both are known."""

from __future__ import annotations

import pytest

from rwkv_plug.data import store


def parts(revision):
    source = {"kind": "hub", "builder": None, "location": "org/set", "params": {}, "revision": revision,
              "files": []}
    return {"config": {"tokenizer": "neox"}, "source": source, "tokenizer": {"spec": "neox"}, "rwkv_plug": "1"}


@pytest.mark.parametrize("built, now, reason", [
    ("abc", "abc", None),
    ("abc", None, None),  # offline now: the revision cannot be checked, the name decides
    (None, "abc", None),  # built offline, online now
    ("abc", "def", "source dataset revision changed"),
])
def test_hub_revision_counts_only_when_known_on_both_sides(tmp_path, built, now, reason):
    store.write_meta(tmp_path, {"meta_version": store.META_VERSION, "parts": parts(built)})
    assert store.stale_reason(tmp_path, parts(now)) == reason


def test_another_hub_name_is_a_change_even_offline(tmp_path):
    store.write_meta(tmp_path, {"meta_version": store.META_VERSION, "parts": parts("abc")})
    other = parts(None)
    other["source"]["location"] = "org/other"
    assert store.stale_reason(tmp_path, other) == "data source changed"
