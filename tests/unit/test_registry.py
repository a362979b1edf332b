"""The registry: built-ins come through the hooks, third-party plugins add and collide with clear errors."""

import dataclasses
import types

import pytest

import anydecode
from anydecode.algorithms.contracts.config import DecoderConfig, config_field
from anydecode.algorithms.contracts.transform import IdentityTransform
from anydecode.registry import ComponentSpec, Registry


@dataclasses.dataclass(frozen=True)
class EchoConfig(DecoderConfig):
    width: int = config_field(1, ge=1)


def _decoder(name):
    return anydecode.Decoder(name=name, config_cls=EchoConfig, kind="transform",
                             make_transform=lambda config, ctx: IdentityTransform())


def _plugin(*names):
    mod = types.ModuleType("throwaway_plugin")

    @anydecode.hookimpl
    def anydecode_register_decoders(register):
        for name in names:
            register(_decoder(name))

    mod.anydecode_register_decoders = anydecode_register_decoders
    return mod


def test_builtin_decoders_are_registered_through_the_hooks():
    registry = Registry(load_entrypoints=False)
    decoders = registry.decoders()
    assert {"greedy", "sample"} <= set(decoders)
    assert decoders["sample"].source == "anydecode.builtin.sampling"


def test_throwaway_plugin_registers_and_unregisters():
    registry = Registry(load_entrypoints=False)
    plugin = _plugin("echo")
    with registry.plugin(plugin, name="throwaway"):
        assert registry.decoder("echo").source == "plugin throwaway"
    assert "echo" not in registry.decoders()


def test_duplicate_name_error_names_both_sources():
    registry = Registry(load_entrypoints=False)
    with pytest.raises(anydecode.RegistryError) as info:
        registry.register_plugin(_plugin("sample"), name="impostor")
    message = str(info.value)
    assert "anydecode.builtin.sampling" in message and "impostor" in message
    assert "sample" in registry.decoders()  # the failed plugin left nothing behind
    assert registry.pm.get_plugin("impostor") is None


def test_unknown_decoder_lists_names_and_closest_match():
    registry = Registry(load_entrypoints=False)
    with pytest.raises(anydecode.RegistryError, match=r"'smaple'.*did you mean 'sample'.*registered: .*greedy.*sample"):
        registry.decoder("smaple")


def test_components_must_be_specs():
    registry = Registry(load_entrypoints=False)
    mod = types.ModuleType("bad_drafter")

    @anydecode.hookimpl
    def anydecode_register_drafters(register):
        register(_decoder("not-a-spec"))

    mod.anydecode_register_drafters = anydecode_register_drafters
    with pytest.raises(anydecode.RegistryError, match="not a ComponentSpec"):
        registry.register_plugin(mod, name="bad")
    good = types.ModuleType("good_drafter")

    @anydecode.hookimpl
    def anydecode_register_rewards(register):
        register(ComponentSpec(name="const", factory=lambda: (lambda text: 1.0)))

    good.anydecode_register_rewards = anydecode_register_rewards
    with registry.plugin(good, name="good"):
        assert registry.get("reward", "const").factory()("x") == 1.0
