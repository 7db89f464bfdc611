"""The experiments on top of fedrec: the command line (``cli``), a run on Flower's simulation
engine (``simulate``), studies and sweeps (``studies``), attacks and audits (``attacks``) and the
report (``report``)."""
