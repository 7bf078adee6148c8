"""Publishing: payloads (JSON + JSON Schema), the durable outbox (SQLite), the MQTT client (paho).

Import from the modules: ``publish.payloads``, ``publish.outbox`` (Outbox, SeqCounter), ``publish.config``
(MqttConfig, TlsConfig), ``publish.client`` (build_client, resolve_password), ``publish.connection``
(MqttConnection: Last Will, reconnects, on-connect listeners, subscriptions), ``publish.sender`` (the outbox
window and acks) and ``publish.mqtt`` (MqttPublisher, the daemon's facade over the last two). Nothing is
imported here, so loading a config does not load paho or sqlite3.
"""
