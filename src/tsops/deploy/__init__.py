"""Kubernetes: the kustomize tree of a project's cluster settings (`tsops deploy render`)."""
