"""The controller: the kopf edge (`handlers`), the operator process (`service`) and the order
of one cycle (`cycle`): meter -> bill -> status/Events. The only package that imports kopf."""
