"""``python -m checkout ...``: the ``checkout`` command (``checkout up`` starts its children so)."""

from checkout.launch import main

main()
