"""One declaration per config key: Option's ranges, wording and legacy policy, and the typed,
frozen section objects built from the declarations."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from rwkv_plug.core.config import Problems, resolve_options
from rwkv_plug.core.interfaces import Legacy, Option
from rwkv_plug.core.option_types import check_value
from rwkv_plug.core.sections import build
from rwkv_plug.training.model_config import ModelConfig
from rwkv_plug.training.options import MODEL_LEGACY, MODEL_OPTIONS, TRAINER_OPTIONS


def resolved(values: dict, options, **kw):
    problems = Problems("cfg.yaml")
    out = resolve_options("s", values, options, problems, check_types=True, **kw)
    return out, problems.items


# -- ranges, wording, YAML numbers -------------------------------------------------------------
def test_minimum_and_below_name_the_bound():
    rate = Option("rate", 0.0, minimum=0.0, below=1)
    assert check_value(rate, -0.5) == (-0.5, "must be >= 0.0, got -0.5")
    assert check_value(rate, 1.5) == (1.5, "must be < 1, got 1.5")
    assert check_value(rate, 0.5) == (0.5, None)


def test_expects_words_every_wrong_value_and_suggest_adds_a_did_you_mean():
    mode = Option("mode", "fast", choices=("fast", "slow"), expects="fast or slow", suggest=True)
    assert check_value(mode, "slwo")[1] == "must be fast or slow, got 'slwo'. Did you mean 'slow'?"
    assert check_value(mode, 5)[1] == "must be fast or slow, got 5."  # the wrong type reads the same
    steps = Option("steps", 0, minimum=0, expects="an integer >= 0")
    assert check_value(steps, -1)[1] == "must be an integer >= 0, got -1"
    assert check_value(steps, True)[1] == "must be an integer >= 0, got True"


def test_yaml_numbers_read_numbers_as_the_earlier_trainer_did():
    ctx, lr = Option("ctx", 2048), Option("lr", None, type=float)
    assert check_value(ctx, 2048.0, yaml_numbers=True) == (2048, None)
    assert check_value(ctx, "12", yaml_numbers=True) == (12, None)
    assert check_value(ctx, 2.5, yaml_numbers=True)[1] == "must be an integer, got 2.5"
    assert check_value(ctx, None, yaml_numbers=True)[1] == "must be a number, got None"
    assert check_value(ctx, True, yaml_numbers=True)[1] == "must be a number, got True"
    assert check_value(lr, "3e-4", yaml_numbers=True) == (3e-4, None)
    assert check_value(lr, None, yaml_numbers=True) == (None, None)  # its default is None: null allowed
    # without it (data: and plugin keys), an integer key takes integers only
    assert check_value(ctx, 2048.0)[1] == "must be an integer, got 2048.0"


# -- legacy keys --------------------------------------------------------------------------------
LEGACY = (
    Option("size", 8),
    Option("old_flag", legacy=Legacy("never applied; remove the key", noop=False)),
    Option("head", legacy=Legacy("the architecture fixes it; set 64", noop=64, kind="fixed")),
    Option("sampler", legacy=Legacy("rwkv-plug sets it", kind="ours")),
)


def test_a_legacy_key_is_refused_in_its_words_unless_set_to_its_no_op():
    out, problems = resolved({"old_flag": True, "head": 32, "sampler": "x"}, LEGACY)
    assert problems == ["s.old_flag is not supported yet: never applied; remove the key",
                        "s.head: the architecture fixes it; set 64", "s.sampler cannot be set: rwkv-plug sets it"]
    out, problems = resolved({"old_flag": False, "head": 64}, LEGACY)
    assert problems == [] and dict(out) == {"size": 8}  # accepted, and in no result
    _, problems = resolved({"old_flag": 0}, LEGACY)  # 0 is not false here
    assert problems == ["s.old_flag is not supported yet: never applied; remove the key"]


def test_a_declared_option_wins_over_a_legacy_key_of_the_same_name():
    plugin_owned = Option("old_flag", 1, "a plugin gives the key a meaning")
    out, problems = resolved({"old_flag": 3}, (*LEGACY, plugin_owned))
    assert problems == [] and out["old_flag"] == 3


def test_values_that_failed_are_named_for_the_rules_across_keys():
    out, problems = resolved({"size": "big"}, LEGACY)
    assert problems == ["s.size must be an integer, got 'big'"] and out.failed == {"size"}


def test_the_model_section_refuses_the_earlier_trainers_keys():
    _, problems = resolved({"token_loss_threshold": 0.5, "head_size": 64}, (*MODEL_OPTIONS, *MODEL_LEGACY))
    assert problems == ["s.token_loss_threshold is not supported yet: selective loss is not implemented; "
                        "remove the key or set it to 0"]


@pytest.mark.parametrize("options", [MODEL_OPTIONS, TRAINER_OPTIONS], ids=["model", "trainer"])
def test_every_default_fits_its_own_declaration(options):
    for opt in options:
        if opt.default is not None:
            assert check_value(opt, opt.default, yaml_numbers=True)[1] is None, opt.name


def test_wkv_precision_choices_are_the_kernels_own():
    from rwkv_plug.kernels.precision import WKV_PRECISIONS

    declared = next(o for o in MODEL_OPTIONS if o.name == "wkv_precision")
    assert set(declared.choices) == set(WKV_PRECISIONS)


# -- the typed, frozen section ------------------------------------------------------------------
def test_a_section_object_is_typed_frozen_and_reads_by_attribute():
    m = build(ModelConfig, {"load_model": "m.pth", "lr_init": 1e-3, "lora_alpha": 16})
    assert m.ctx_len == 2048 and m.lr_init == 1e-3 and m.tuning == "full"
    assert m.lora_alpha == 16.0 and isinstance(m.lora_alpha, float)  # a float key holds a float
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.ctx_len = 1
    assert m.replace(ctx_len=512).ctx_len == 512 and m.ctx_len == 2048
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    assert set(fields) == {o.name for o in MODEL_OPTIONS}
    assert fields["ctx_len"].type is int and "Chunk length" in fields["ctx_len"].metadata["help"]
    assert pickle.loads(pickle.dumps(m)) == m  # DDP spawn pickles what holds it


def test_a_section_object_still_reads_like_a_mapping_during_the_transition():
    m = ModelConfig(load_model="m.pth")
    assert m["ctx_len"] == m.get("ctx_len") == 2048 and m.get("nope", 7) == 7
    assert dict(m)["load_model"] == "m.pth" and m.as_dict() == dict(m) and "kernel" in m
    with pytest.raises(KeyError):
        m["nope"]
    with pytest.raises(TypeError, match="no field 'nope'"):
        build(ModelConfig, {"nope": 1})


def test_list_defaults_are_not_shared_between_objects():
    a, b = ModelConfig(), ModelConfig()
    assert a.sample_prompts == [] and a.sample_prompts is not b.sample_prompts


def test_the_data_section_object_holds_plugin_keys_apart_and_reads_them_as_keys():
    from rwkv_plug.data.options import DATA_OPTIONS, data_config, resolve_data_config

    problems = Problems("cfg.yaml")
    values = resolve_data_config({"source": "a.txt", "data_path": "out", "multi_column_keys": ["q", "a"],
                                  "multi_column_prefix": ["Q: ", "A: "],
                                  "multi_column_train_mask": [False, True]}, problems)
    assert problems.items == []
    data = data_config(values)
    assert data.source == "a.txt" and data.source_dataset_params == {}
    assert data.plugin_options["multi_column_keys"] == ["q", "a"] and data["multi_column_keys"] == ["q", "a"]
    assert dict(data) == dict(values)  # what the pipeline takes: every key, plugin keys included
    assert all(o.name in data for o in DATA_OPTIONS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.source = "b.txt"


def test_a_plugin_reads_its_own_keys_as_attributes_with_their_defaults():
    from rwkv_plug.builtin_strategies.multi_column import MultiColumnStrategy
    from rwkv_plug.builtin_strategies.text import TextStrategy
    from rwkv_plug.core.sections import option_values

    section = {"custom_text_key": "body", "multi_column_keys": ["q"], "source": "a.txt"}
    text = option_values(TextStrategy, section)
    assert text.custom_text_key == "body" and not hasattr(text, "source")  # its own keys only
    multi = option_values(MultiColumnStrategy, section)
    assert multi.multi_column_keys == ["q"] and multi.multi_column_separator is None  # unset: its default
    assert pickle.loads(pickle.dumps(multi)) == multi  # a strategy holding it goes to worker processes
    with pytest.raises(dataclasses.FrozenInstanceError):
        multi.multi_column_keys = []


def test_the_trainer_section_is_typed_and_passes_unknown_lightning_arguments_on():
    from rwkv_plug.training.config import TrainerConfig, lightning_kwargs

    # as load_fit_config builds it: rwkv-plug's defaults under the given keys, its own keys taken out
    t = build(TrainerConfig, {"max_steps": 7, "devices": 1, "accelerator": "cpu", "strategy": "auto",
                              "gradient_clip_val": 1.0})
    assert (t.max_steps, t.devices, t.accelerator, t.num_nodes) == (7, 1, "cpu", 1)
    assert t.precision is None and t.max_epochs is None  # unset: Lightning's own default
    assert t.lightning_options == {"gradient_clip_val": 1.0}
    kwargs = lightning_kwargs(t)
    assert kwargs["max_steps"] == 7 and kwargs["gradient_clip_val"] == 1.0 and kwargs["strategy"] == "auto"
    assert "precision" not in kwargs and "max_epochs" not in kwargs  # Lightning's defaults stay Lightning's
    assert "microbatch_size" not in TrainerConfig.__section_keys__  # rwkv-plug's own keys are FitConfig fields
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.max_steps = 8


@pytest.mark.parametrize("seed, message", [
    ("abc", "seed_everything must be an integer or true/false, got 'abc'"),
    (1.5, "seed_everything must be an integer or true/false, got 1.5"),
])
def test_seed_everything_is_checked_by_its_declaration(tmp_path, seed, message):
    import yaml

    from rwkv_plug.core.errors import ConfigError
    from rwkv_plug.training.config import load_fit_config

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"seed_everything": seed, "model": {"lr_init": 1e-3}, "data": {"source": "x"}}))
    with pytest.raises(ConfigError) as err:
        load_fit_config(path)
    assert message in str(err.value)
