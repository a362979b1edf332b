"""Built-in plugin: the runtimes ``llamacpp`` (the CLI's default), ``hf``, ``vllm`` and ``toy``.

Registering a runtime imports none of them: each adapter imports its runtime when a model is loaded.
"""

from anydecode.hookspecs import hookimpl


@hookimpl
def anydecode_register_runtimes(register):
    from anydecode.conformance.toy_runtime import ToyRuntime
    from anydecode.plugins.hf.runtime import HFRuntime
    from anydecode.plugins.llamacpp.runtime import LlamaCppRuntime
    from anydecode.plugins.vllm.runtime import VLLMRuntime

    for runtime in (LlamaCppRuntime(), HFRuntime(), VLLMRuntime(), ToyRuntime()):
        register(runtime)
