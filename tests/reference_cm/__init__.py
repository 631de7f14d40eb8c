"""A minimal float64 port of the authors' code for Adam with critical momenta / gradients, for tests only.

Source: chandar-lab/CMOptimizer, ``cmoptimizer/optim.py`` (``Adam_CM``, ``Adam_C``, commit 37f2b39) and
``cmoptimizer/prioritydict.py`` (``TensorList``, commit 4aad38e). Kept line for line where it matters (the buffer's
running sum, ``argmin`` tie-breaking, the strict ``>`` test, decay after every step, the step counter); dropped: the
statistics counters, ``amsgrad``, ``buffer_dtype``, and the ``critical_test`` coin (its default 0.0 makes
``np.random.uniform() >= critical_test`` always true, i.e. priority replacement). The stored optim.py calls
``set_hyper``/``add_item``/``is_full``/``poke_smallest`` while the stored prioritydict.py defines the camelCase
names; the port uses one set of names. Not fixed: ``kappa=0`` still crashes (KeyError), as in the original.
"""

from .optim import Adam_C, Adam_CM, TensorList

__all__ = ["Adam_CM", "Adam_C", "TensorList"]
