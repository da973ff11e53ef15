//! MQTT bridge tests.
