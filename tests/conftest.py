"""Shared fixtures live in tests/fixtures/, one module per concept; this file only registers them."""

pytest_plugins = [
    "tests.fixtures.broker",  # a real mosquitto on a free port (plain, password, TLS, ACL)
    "tests.fixtures.publishing",  # an outbox and MqttPublishers stopped at teardown
    "tests.fixtures.digits",  # the digits CNN: trained once, cached; converted with edge-convert
    "tests.fixtures.tflite_models",  # small TFLite models with known heads, made by TensorFlow
    "tests.fixtures.streams",  # videos rendered by the tests and ffmpeg streams on loopback
    "tests.fixtures.sources",  # sources started by a test, always closed
    "tests.privacy",  # the privacy watch on '#' every end-to-end test runs
    "tests.fixtures.fast",  # -m "not slow" never starts TensorFlow; TF fixtures mark their tests slow
]
