"""The PyTorch side of jax_iris, installed with the ``torch`` extra.

- ``reference``: the blog's experiment restated in PyTorch (the nets, its training loop,
  its evaluation, ``.pth`` files); it imports torch.
- ``compat``: a torch ``state_dict`` to jax_iris params and back, in numpy; it does not
  import torch, so it works without the extra.

Nothing else in the installed package imports torch. Importing this package imports
neither module.
"""

INSTALL_COMMAND = 'pip install "jax-iris[torch]"'
