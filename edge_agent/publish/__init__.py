"""Publishing: payloads (JSON + JSON Schema), the durable outbox (SQLite), the MQTT client (paho).

Import from the modules: ``publish.payloads``, ``publish.outbox`` (Outbox, SeqCounter), ``publish.mqtt``
(MqttConfig, TlsConfig, MqttPublisher, resolve_password). Nothing is imported here, so loading a config does
not load paho or sqlite3.
"""
