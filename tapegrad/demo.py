"""``make demo`` / ``python -m tapegrad.demo``: the article examples, run for real.

Runs the code of ``shared/seeds/000`` (tensors and autograd) with
``import tapegrad as torch``, prints what it really prints, and marks where the
article's printed output is wrong (see ``shared/seeds/ERRATA.md``). After each
graph it prints the tape: the graph is a view of these records. Then it runs the
four article notebooks (``notebooks/``) headlessly and writes the executed copies
and their figures (graph SVG/PNG, loss plots) into ``demo-output/``
(``tapegrad/_notebooks.py``).
"""
import time

import tapegrad as torch


def section(title):
    print()
    print("=" * 72)
    print(title)
    print("=" * 72)


def article_says(text):
    print(f"  [article says: {text}]")


def article_000():
    section("000 §6  创建张量 (creating tensors)")
    scalar = torch.tensor(5)
    vector = torch.tensor([1, 2, 3])
    matrix = torch.tensor([[1, 2, 3], [4, 5, 6]])
    three_d_tensor = torch.tensor([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
    print(scalar)
    print(vector)
    print(matrix)
    print(three_d_tensor)

    section("000 §8/§9  requires_grad, backward()")
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    print(x.requires_grad)
    x = torch.tensor(2.0, requires_grad=True)
    y = x ** 2
    y.backward()
    print(x.grad)

    section("000 §10  detach() and no_grad()")
    x = torch.tensor(2.0, requires_grad=True)
    y = x ** 2
    z = y.detach()
    print(z.requires_grad)
    with torch.no_grad():
        z = x ** 2
    print(z.requires_grad)

    section("000 §13  grad_fn")
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0]], requires_grad=True)
    y = x ** 2
    print(y)
    print(y.grad_fn)
    article_says("tensor([[1., 1.],[1., 1.]], grad_fn=<PowBackward0>) on one line; the real repr has two lines")
    y.backward(torch.ones_like(y))
    print(x.grad)

    section("000 例子  z = sin(x**2) and its gradient")
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x ** 2
    print("y:", y)
    z = torch.sin(y)
    print("z:", z)
    article_says("z: tensor([0.8415, 0.9093]) -- but sin(4) = -0.7568")
    print("the tape behind z:")
    print(torch.tape(z, {id(x): "x"}))
    z.backward(torch.ones_like(z))
    print("x.grad:", x.grad)
    article_says("x.grad: tensor([1.6830, 1.8186]) 'because of accumulation' -- the true gradient 2x*cos(x^2) is "
                 "[1.0806, -2.6146], and nothing accumulated on the first call")

    section("000 区别  backward twice through the same graph")
    x.grad.zero_()
    try:
        z.backward(torch.ones_like(z))
    except RuntimeError as e:
        print("RuntimeError:", str(e)[:100] + "...")
    article_says("a second z.backward() after x.grad.zero_() prints the gradient again -- PyTorch raises, "
                 "unless the first call used retain_graph=True")
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x ** 2
    z = torch.sin(y)
    z.backward(torch.ones_like(z), retain_graph=True)
    x.grad.zero_()
    z.backward(torch.ones_like(z))
    print("with retain_graph=True, x.grad (from z):", x.grad)
    x.grad.zero_()
    try:
        y.backward(torch.ones_like(y))
    except RuntimeError:
        print("y.backward(...) after z's backward freed y's part of the graph: RuntimeError, as in PyTorch")
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x ** 2
    y.backward(torch.ones_like(y))
    print("x.grad (from y):", x.grad)


def engine_tour():
    section("inside tapegrad: record, flush, replay")
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    b = torch.tensor(0.1, requires_grad=True)
    x = torch.tensor([1.0, 2.0, 3.0])
    loss = torch.tanh(x * w + b).sum()
    print(torch.tape(loss, {id(w): "w", id(b): "b"}))
    t = time.perf_counter()
    loss.backward()
    print(f"one jitted reverse replay: {1e3 * (time.perf_counter() - t):.2f} ms (first call includes loading "
          f"the compiled replay from the cache)")
    print("w.grad:", w.grad, " b.grad:", b.grad)
    print("loss.grad_fn:", loss.grad_fn.name(), "-> next:", [n and n.name() for n, _ in loss.grad_fn.next_functions])


def notebooks(outdir=None):
    """Run the four article notebooks (notebooks/NN_*.ipynb) headlessly into demo-output/."""
    section("the article notebooks, executed (notebooks/ -> demo-output/)")
    try:
        from ._notebooks import run_demo
        import nbclient  # noqa: F401
        import ipykernel  # noqa: F401
    except ImportError as e:
        print(f"skipped: {e.name} is not installed (pip install -e '.[demo]' installs nbclient, ipykernel, "
              f"matplotlib, tqdm and graphviz-pure)")
        return None
    return run_demo(outdir)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="python -m tapegrad.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-notebooks", action="store_true", help="only the console walkthrough")
    ap.add_argument("--out", default=None, help="where the executed notebooks and figures go (default: demo-output/)")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    article_000()
    engine_tour()
    if not a.no_notebooks:
        notebooks(a.out)
    print(f"\ndemo finished in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
