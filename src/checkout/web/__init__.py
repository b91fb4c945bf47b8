"""The checkout's web pages: the shop at ``/`` (order form, the four classic scenarios as
buttons, live inventory and balances, the orders table) and the generic saga pages of
:mod:`sagaway.web` under ``/ui``, with retry and cancel that keep the orders in step."""

from checkout.web.shop import SCENARIO_BUTTONS, UI_PREFIX, ui_routers

__all__ = ["SCENARIO_BUTTONS", "UI_PREFIX", "ui_routers"]
