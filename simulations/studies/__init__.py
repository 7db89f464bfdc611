"""Studies: sweeps of federated runs (``runner``, ``sweeps``), the default trade-off study
(``study``) and its axes (``frontier``, ``models``, ``sequential``, ``stream``, ``coldstart``),
the mechanism choice measured (``choice``) and ties in time measured (``ties``)."""
