"""Built-in plugin: the ``greedy`` and ``sample`` decoders."""

from anydecode.hookspecs import hookimpl


@hookimpl
def anydecode_register_decoders(register):
    from anydecode.algorithms.sampling.decoders import GREEDY, SAMPLE

    register(GREEDY)
    register(SAMPLE)
