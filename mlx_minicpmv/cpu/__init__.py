"""Everything that exists only because MLX's CPU backend is slow, behind one seam.

``mlx_minicpmv/model`` is the portable MLX model, the one Metal runs. Where MLX computes on
its CPU backend, ``load`` hands the model to ``seam.specialise``, which swaps in the layers of
this folder (subclasses that change how a layer computes, never what) and sets the CPU's
choices, so the model code stays the same everywhere. ``seam.applies`` is the one predicate
that decides; ``load(..., cpu_kernels=False)`` or ``MLX_MINICPMV_CPU_KERNELS=off`` runs the
portable path on the CPU. A new CPU kernel is one registration: ``@seam.replaces(Layer)`` on
its subclass of the portable layer (``registry.py``).

This package imports no MLX on its own, so the OpenBLAS loader can run before ``mlx.core``.
"""
