"""The lab: trains small real models with every adamlab optimizer under an equal tuning budget and reports
which of the papers' claims held (``adamlab bench``; see ``adamlab.lab.bench.run_bench``).

Layout: ``tasks/`` (the training problems), ``spaces`` (the search spaces, keyed by registry name), ``space``
(search spaces -> Optuna), ``comparators`` (the papers' other optimizers), ``protocol``
(tuning, seeds, resumable workers sharing studies), ``storages`` (storage URLs, heartbeats, the
shared ask lock), ``store`` (the run tables, beside the studies), ``timing`` (step-time micro-benchmark),
``metrics``/``stats`` (embedding, sharpness and target metrics, t-intervals, Welch, Holm), ``analysis``/
``claims`` (tables, lattice, claims ledger), ``plots``/``report`` (report.html, summary.md, PNGs), ``files``
(checks of the user's folders and databases).
"""
