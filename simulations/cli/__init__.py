"""The ``fedrec`` command line: its parser and subcommands (``main``), the flags generated from
the configuration (``flags``), the run's console log (``console``) and Ctrl-C/SIGTERM (``signals``)."""
