"""The validating admission webhook: denies new GPU pods and GPU scale-ups in the
namespaces of a suspended Tenant. Served by every replica, with a self-managed certificate."""
