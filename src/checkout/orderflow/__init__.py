"""Seed 004: order, payment and delivery services as a choreography (``services``), run by
``OrderFlow`` (``runtime``); see the README's "Pay later: seed 004"."""

from checkout.orderflow.runtime import OrderFlow, timeline
from checkout.orderflow.services import FlowConflict, FlowError, FlowInvalid, FlowNotFound, couriers

__all__ = [
    "FlowConflict",
    "FlowError",
    "FlowInvalid",
    "FlowNotFound",
    "OrderFlow",
    "couriers",
    "timeline",
]
