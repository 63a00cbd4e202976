"""Billing: policy over the ledger. Running and final statements, the period close, wallet
burns per period and late-usage adjustments. It rates (with `rating`) what the ledger stores,
and hands the ledger what to store; the ledger itself never prices."""
