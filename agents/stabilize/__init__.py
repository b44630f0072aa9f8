"""Feed-forward beam stabilisation against the undulator gaps.

* :mod:`~agents.stabilize.schedules`: how the gaps move (energy scans, steps, a
  neighbour's gap);
* :mod:`~agents.stabilize.plant`: the twin, linearised about the aligned beam,
  with the hidden gap dependence, the drift and the corrector knobs;
* :mod:`~agents.stabilize.calibration`: the knob-response and gap scans a
  stabiliser runs on its beamline;
* :mod:`~agents.stabilize.models`: lookup table, MLP and Gaussian-process
  feed-forward models;
* :mod:`~agents.stabilize.correctors`: none, feedback, feed-forward, both;
* :mod:`~agents.stabilize.env`: ``beamtwin/Stabilize-v0``;
* :mod:`~agents.stabilize.rl`: the stable-baselines3 corrector;
* :mod:`~agents.stabilize.bench`: every corrector on the same held-out schedules.
"""
