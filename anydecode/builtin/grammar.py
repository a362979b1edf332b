"""Built-in plugin: the ``gcd`` and ``asap`` decoders and the ``llguidance`` and ``outlines`` grammar engines."""

from anydecode.hookspecs import hookimpl


def _llguidance():
    from anydecode.algorithms.grammar.llguidance_engine import LLGuidanceEngine

    return LLGuidanceEngine()


def _outlines():
    from anydecode.algorithms.grammar.outlines_engine import OutlinesEngine

    return OutlinesEngine()


@hookimpl
def anydecode_register_decoders(register):
    from anydecode.algorithms.grammar.decoders import ASAP, GCD

    register(GCD)
    register(ASAP)


@hookimpl
def anydecode_register_grammar_engines(register):
    from anydecode.registry import ComponentSpec

    register(ComponentSpec("llguidance", _llguidance, None,
                           "llguidance (Earley parser, masks on the fly): lark, gbnf, json_schema, regex; the default"))
    register(ComponentSpec("outlines", _outlines, None,
                           "outlines-core (token automaton, integer states): regex, json_schema"))
