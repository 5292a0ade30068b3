"""Developer tools, run from a checkout's root: ``python -m scripts.<tool>``.

    scripts.gen_protos   regenerate protos/ (``--check``: fail when stale)
    scripts.bench.*      benchmarks of one service each (docs/PERFORMANCE.md)
    scripts.chaos        the whole system under simulated apps while every process dies

Not installed (a top-level package named ``scripts`` would clash with any other project's):
these tools import the installed packages, and nothing installed imports them. The simulated
apps are part of the ``rideshare`` command, in ``rideshare.simulate``.
"""
