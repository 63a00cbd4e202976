"""Reserved ledger tenants."""

UNASSIGNED = "_unassigned"
"""Usage of pods no Tenant owns is recorded under this name (not a valid Kubernetes name):
never dropped, never invoiced (it has no terms); `kubemeter unassigned` lists it."""
