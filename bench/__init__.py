"""tapegrad benchmark suite: ``python -m bench --help`` (see bench/README.md).

Workloads and peers follow ../shared/BENCHMARKS.md. Each workload module
(``w1_scalar_chain``, ``w3_elementwise``, ``w5_article_loops``,
``c0_startup``) exposes ``ID``, ``TITLE`` and ``run(ctx) -> list[Table]``;
``harness`` times, cross-checks, prints and writes JSON; ``peers`` imports
the optional peers; ``plot`` draws a results file.
"""
