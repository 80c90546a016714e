"""The composition root: the `throttllem` command and the embedded stack it runs.

The four packages each own one part (see the README); only this one wires them.
"""
