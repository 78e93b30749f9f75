"""tapegrad benchmark suite: ``python -m bench --help`` (see bench/README.md).

Workloads and peers follow ../shared/BENCHMARKS.md. Each workload module
(``w1_scalar_chain``, ``w2_mlp``, ``w3_elementwise``, ``w4_rnn``,
``w5_article_loops``, ``c0_startup``) exposes ``ID``, ``TITLE`` and
``run(ctx) -> list[Table]``; ``harness`` times, cross-checks, prints and
writes JSON; ``peers`` imports the optional peers; ``functional`` holds the
jax / HIPS autograd implementations; ``plot`` draws a results file.
"""
