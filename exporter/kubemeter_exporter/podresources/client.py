"""Client of ``v1.PodResourcesLister/List`` on the kubelet's unix socket.

Mount the *directory* ``/var/lib/kubelet/pod-resources`` (not the socket): the kubelet
recreates the socket when it restarts, and a fresh channel is opened after any error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
LIST_METHOD = "/v1.PodResourcesLister/List"


class PodResourcesError(Exception):
    """The pod-resources API could not be read (wraps grpc errors)."""


@dataclass(frozen=True, slots=True)
class ContainerAllocation:
    namespace: str
    pod: str
    container: str
    resource: str
    device_ids: tuple[str, ...]


class PodResourcesLister(Protocol):
    def list(self) -> list[ContainerAllocation]:
        """Current device allocations; raises PodResourcesError."""


class StaticPodResources:
    """Allocations from a callable (simulation, tests)."""

    def __init__(self, source: Callable[[], Iterable[ContainerAllocation]]) -> None:
        self._source = source

    def list(self) -> list[ContainerAllocation]:
        return list(self._source())


def allocations_from_response(resp: Any) -> list[ContainerAllocation]:
    out: list[ContainerAllocation] = []
    for pr in resp.pod_resources:
        for c in pr.containers:
            for d in c.devices:
                if d.device_ids:
                    out.append(
                        ContainerAllocation(
                            namespace=pr.namespace,
                            pod=pr.name,
                            container=c.name,
                            resource=d.resource_name,
                            device_ids=tuple(d.device_ids),
                        )
                    )
    return out


class PodResourcesClient:
    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout_s: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._channel: Any = None
        self._call: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        import grpc

        from kubemeter_exporter.podresources import api_pb2

        if self._call is None:
            self._channel = grpc.insecure_channel(f"unix://{self.socket_path}")
            self._call = self._channel.unary_unary(
                LIST_METHOD,
                request_serializer=api_pb2.ListPodResourcesRequest.SerializeToString,
                response_deserializer=api_pb2.ListPodResourcesResponse.FromString,
            )
        return self._call

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = None
            self._call = None

    def list(self) -> list[ContainerAllocation]:
        import grpc

        from kubemeter_exporter.podresources import api_pb2

        with self._lock:
            call = self._connect()
        try:
            resp = call(api_pb2.ListPodResourcesRequest(), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            self.close()  # reconnect next time (the kubelet may have restarted)
            code = exc.code() if hasattr(exc, "code") else "?"
            raise PodResourcesError(f"pod-resources List on {self.socket_path}: {code}") from exc
        return allocations_from_response(resp)
