"""The participant side of remote steps: serve a service's commands to sagas.

``sagaway.participant.rabbitmq`` serves a handler over RabbitMQ (needs ``aio-pika``, the
``rabbitmq`` extra); it is not imported here so that the package imports without it.
"""

__all__: list[str] = []
