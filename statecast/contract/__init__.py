"""The step-model contract shared by the exporter and the worker: spec, manifest, paths."""
