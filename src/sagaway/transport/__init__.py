"""Transports: how a saga's remote steps reach the services that run them (see ``base``)."""

from sagaway.transport.base import Command, Dispatcher, Reply, ReplyHandler, TransportError
from sagaway.transport.stub import StubDispatcher

__all__ = ["Command", "Dispatcher", "Reply", "ReplyHandler", "StubDispatcher", "TransportError"]
