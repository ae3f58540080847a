"""Offline side of skipvit: it trains the backbone, searches operating points and writes bundles.

- ``train/``: the training commands (``static``, ``rl``, ``exits``);
- ``search/``: the searches that add points to a bundle's front (``nsga``, ``dyce``, ``lac``);
- ``evaluate_bundle``, ``analyze``, ``parity``: the other commands;
- the spine they share: ``run`` (context, resume, stop-after, the epoch loop), ``publish`` (the
  one way points go into a bundle), ``splits`` (which train/val split a run keeps), ``configs``
  (a command's settings from its flags), ``data/``, ``evaluate``, ``reinforce``, ``backbone``,
  ``optim``, ``schedule``, ``presets``, ``device``, ``distributed`` (the training commands under
  torchrun), ``checkpoint``, ``report``, ``fronts`` and ``plots``.

Every command module has ``add_arguments(parser)`` and ``run(args)``; ``skipvit/cli.py`` wires them.
"""
