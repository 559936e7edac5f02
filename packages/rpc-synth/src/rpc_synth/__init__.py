"""rpc-synth: synthesized checkout images from single-product exemplars, and an embedded mini RPC world.

The stages, one module each: ``world`` (the mini world), ``masks`` (exemplar masks), ``poses`` (pose pruning),
``fit`` (synthesis settings from checkout data), ``generate`` (composition of checkout images) and ``render`` (the
translation toward the checkout domain); ``cli`` is the ``rpc-synth`` command over them.
"""
