"""Small helpers every layer may import: the bottom of the layering, one job per module.

========================== ==============================================================
:mod:`.checks`             integer / float / choice validation, one message style
:mod:`.progress`           whether to show a progress bar
:mod:`.jsonsafe`           values to strict JSON (non-finite floats become ``null``)
:mod:`.figures`            an Agg figure, and one function that saves a PNG and closes it
:mod:`.warning_capture`    record warnings during a call and print them in one style
========================== ==============================================================

Nothing here imports another part of :mod:`ppl_models`; :mod:`guides` keeps its own copies,
since it never imports :mod:`ppl_models`.
"""
