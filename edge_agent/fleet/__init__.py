"""Model delivery over MQTT: signed deployments, verified and applied on the device, sent by ``edge-fleet``.

Device side: ``verify`` (parse, signature, replay, target) -> ``agent.DeployAgent`` (fetch, store, test, swap,
watch, roll back) with ``store`` (files and the persisted record) and ``state`` (the reported deploy state).
Workstation side: ``cli`` (``edge-fleet``) over ``broker``. Shared: ``messages``, ``signing``, ``golden``,
``topics``. Nothing here imports a runtime or TensorFlow: loading a model is a callable the daemon passes in.
"""
