"""Built-in plugin: the speculative decoding family (``anydecode.algorithms.speculative.decoders``).

Drafters ``draft_model``, ``prompt_lookup``, ``iad``, ``aded``, ``suffix`` and ``oracle`` (benchmarks); decoders
``speculative`` (any registered drafter, chosen with ``drafter=``, its settings beside the sampling ones) and the
shortcuts ``iad``, ``aded``, ``prompt_lookup`` and ``suffix``.
"""

from anydecode.hookspecs import hookimpl


@hookimpl
def anydecode_register_drafters(register):
    from anydecode.algorithms.speculative.decoders import BUILTIN_DRAFTERS

    for spec in BUILTIN_DRAFTERS.values():
        register(spec)


@hookimpl
def anydecode_register_decoders(register):
    from anydecode.algorithms.speculative.decoders import DECODERS

    for decoder in DECODERS:
        register(decoder)
