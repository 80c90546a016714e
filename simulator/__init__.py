"""Digital twin of a TensorRT-LLM engine on a GPU, stepped in virtual time or served by Triton.

Nothing in `gateway/` or `governor/` imports this package at run time: they see the twin
only as a Triton server and a GPU control API, exactly as they see real ones.
"""
