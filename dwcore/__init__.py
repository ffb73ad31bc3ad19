"""The parts of dataward (agents, stream, detectors, sinks, schemas), installed under one namespace.

In the checkout each part keeps its own top-level folder; packaging maps ``dwcore.<part>`` onto it.
"""
