"""Home Assistant MQTT discovery: the device and its pipelines appear in Home Assistant by themselves.

``config.py`` is the ``homeassistant:`` config section (light: validating a config imports nothing else);
``entities.py`` turns each pipeline's task into discovery payloads that read the existing result and stats
topics; ``discovery.py`` announces them on every connect and on Home Assistant's birth message, and empties
the retained config of entities that no longer exist.
"""
