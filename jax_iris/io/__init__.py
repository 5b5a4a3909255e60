"""File formats and safe I/O: what jax_iris writes to disk, and how it writes it.

- ``fileio``: atomic writes and journaled commits (an output set is old or new, never
  a mix); every file below is written through it.
- ``checkpoint``: a trained net, its config and its history in one safe-to-read pickle.
- ``safe_pickle``: a pickle of builtins only, checked opcode by opcode, unpickled with no
  global resolved (what ``checkpoint`` reads with).
- ``store``: the sweep's results store, the finished chunks a sweep resumes from.

These modules import the core ones (config, models, registry, quote). Of the modules
outside io, only the commands, ``report.plots``, ``predict`` (it loads a checkpoint given
as a path) and ``pytorch.reference`` (``atomic_write``) import them back.
Importing this package imports none of them.
"""
