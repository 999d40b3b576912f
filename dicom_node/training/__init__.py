"""Training and evaluation of the models, apart from inference (the ``train`` extra).

Readers of each data layout, training, evaluation, metrics and plots, and the
``train``/``evaluate`` commands. The worker never imports this package: what it
needs (networks, registry, runner, result, combine, threshold) is in
:mod:`dicom_node.models`.
"""
