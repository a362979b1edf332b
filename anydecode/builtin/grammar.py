"""Built-in plugin: the ``gcd`` and ``asap`` decoders and the ``llguidance`` and ``outlines`` grammar engines."""

from anydecode.hookspecs import hookimpl


@hookimpl
def anydecode_register_decoders(register):
    from anydecode.algorithms.grammar.decoders import ASAP, GCD

    register(GCD)
    register(ASAP)


@hookimpl
def anydecode_register_grammar_engines(register):
    from anydecode.algorithms.contracts.component import ComponentSpec
    from anydecode.algorithms.grammar.engines import BUILTIN_ENGINES

    for name, (factory, description) in BUILTIN_ENGINES.items():
        register(ComponentSpec(name, factory, None, description))
