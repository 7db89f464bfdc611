"""Attacks and audits: poisoning by malicious nodes (``poisoning``), an honest-but-curious
server's leakage attacks (``leakage``) and the one-run empirical DP audit (``audit``)."""
