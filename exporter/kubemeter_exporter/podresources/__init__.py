"""Kubelet pod-resources API: which pod/container holds which device IDs.

``api.proto`` is our own subset of the kubelet's ``v1`` API; ``api_pb2*.py`` are generated
from it and checked in (regenerate from ``exporter/`` with
``python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=.
kubemeter_exporter/podresources/api.proto``).
"""

from kubemeter_exporter.podresources.client import (
    ContainerAllocation,
    PodResourcesClient,
    PodResourcesError,
    PodResourcesLister,
    StaticPodResources,
)

__all__ = [
    "ContainerAllocation",
    "PodResourcesClient",
    "PodResourcesError",
    "PodResourcesLister",
    "StaticPodResources",
]
