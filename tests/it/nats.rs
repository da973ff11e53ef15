//! NATS bridge tests.
