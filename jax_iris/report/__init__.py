"""What runs show: tables, progress, TensorBoard events, sweep summaries and figures.

- ``tables``: a training run's progress lines and the blog's evaluation table.
- ``tensorboard``: a run's TensorBoard events, and the HParams events of a grid.
- ``progress``: the progress of long runs, a bar on a terminal, plain lines in logs.
- ``sweep_report``: a sweep's per-cell statistics, paired comparisons, summary and CSV.
- ``plots``: the blog's figures, from checkpoints and from a sweep (matplotlib).

These modules import the core and io ones; only the commands (``jax_iris.cli``) import
them. Importing this package imports none of them.
"""
