"""The ``tapegrad.capture`` peer: a workload's step recorded once and replayed.

The peer runs the same code as the ``tapegrad`` peer, wrapped in
``tapegrad.capture(step_fn)`` (see ``tapegrad/capture.py``): the first call
runs the step eagerly and records it, later calls with the same argument
shapes replay the recorded program without running the step's Python.

``Replayed(tg, fn, args, reset)`` is what a workload's capture peer holds:

* on construction it calls ``fn(*args)`` twice, untimed, with the warnings
  recorded: the capturing call (its time is ``extra["capture_s"]``) and one
  probe replay; then ``reset()`` puts the workload back where it started
  (gradients to None; for a training step the parameters back to their
  initial values), so that the cross-check call, which is a replay, is
  compared with torch's first step;
* ``skip_reason``: when the probe did not replay (capture refused the step, or
  a guard sent it back to eager), ``"skipped: <the capture warning>"``, and
  the workload's row is skipped rather than timing eager under another name;
* ``audit()``: after the cross-check and again after timing, the list of
  problems (and ``extra["capture_stats"]``, the step's ``stats`` then): a second capture, any eager call (fallback) or warning, or no
  replay at all; a non-empty list makes the row ``FAILED``;
* calling it, ``rep()``, is one captured call; the step returns the loss (a
  tensor: an ``item()`` inside the step would be a guard), which the peer
  reads outside.
"""
import time
import warnings

PEER = "tapegrad.capture"
NOTE = "tapegrad.capture(step), replayed"


class Replayed:
    """``tapegrad.capture(fn)`` called with fixed ``args``: captured and probed on construction."""

    def __init__(self, tg, fn, args=(), reset=None):
        self.step = tg.capture(fn)
        self.args = tuple(args)
        self.name = getattr(fn, "__name__", "step")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            self.step(*self.args)                 # eager, recorded
            t1 = time.perf_counter()
            self.step(*self.args)                 # the probe: a replay, or a fallback that says why
            t2 = time.perf_counter()
        said = []
        for w in caught:
            text = str(w.message)
            if text.startswith("tapegrad.capture("):
                said.append(text)
            else:                                 # not ours: let it through
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        self.warnings = said
        stats = dict(self.step.stats)
        self.extra = {"capture_s": t1 - t0, "probe_replay_s": t2 - t1, "capture_stats_after_probe": stats}
        self.skip_reason = None
        if said or stats["replayed"] != 1 or stats["eager"]:
            self.skip_reason = "skipped: " + ("; ".join(said) if said else
                                              f"tapegrad.capture({self.name}) did not replay (stats {stats})")
        if reset is not None:
            reset()

    def __call__(self):
        return self.step(*self.args)

    def audit(self):
        """Problems that mean the timed calls were not (all) replays; empty when all is well."""
        s, bad = self.step.stats, []
        self.extra["capture_stats"] = dict(s)
        if s["captured"] != 1:
            bad.append(f"captured {s['captured']} times (a guard key changed)")
        if s["eager"]:
            bad.append(f"{s['eager']} call(s) ran eagerly")
        if s["replayed"] < 2:
            bad.append(f"only {s['replayed']} replay(s)")
        if self.step.said:
            bad.append("capture said: " + "; ".join(sorted(self.step.said)))
        return bad
