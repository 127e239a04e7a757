"""The rename table reads both ways over every parameter of MONAI's networks (all configurations)."""

from __future__ import annotations

import pytest

from motfm.interop.monai_keys import to_monai_name, to_suite_name
from motfm_original import CONFIGS, build_original


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_monai_parameter_translates_and_back(name):
    net = build_original(CONFIGS[name])
    targets = {}
    for key in (f"model.{k}" for k in net.state_dict()):
        rename = to_suite_name(key)
        assert rename is not None, key
        if rename.transform == "drop":
            assert key.endswith(("proj_attn.weight", "proj_attn.bias"))  # never applied by MONAI
            continue
        targets.setdefault(rename.target, []).append(key)
        back = to_monai_name(rename.target)
        assert back == (key.replace(".to_v.", ".to_k.") if rename.transform == "v" else key)
    merged = {t: ks for t, ks in targets.items() if len(ks) > 1}
    assert all(t.endswith(("to_kv.weight", "to_kv.bias")) and len(ks) == 2 for t, ks in merged.items())
    assert to_suite_name("model.unet.not_a_layer.weight") is None
