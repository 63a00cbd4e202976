"""Metering: Prometheus counter values at window boundaries -> per-tenant usage windows in
the ledger (with the checkpoint, atomically). See :mod:`kubemeter_operator.metering.cycle`."""
