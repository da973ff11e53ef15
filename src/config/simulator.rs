//! Validates `[simulator]` into a [`Simulator`]: a memory broker, a device count, an interval.

use super::raw::RawSimulator;
use super::values::{bounded, duration};
use super::{
    Broker, BrokerKind, ConfigError, Locator, DEFAULT_SIMULATED_DEVICES,
    DEFAULT_SIMULATOR_INTERVAL, SIMULATED_DEVICES_RANGE,
};
use crate::simulator::Simulator;

/// `[simulator]`: it publishes on one of `brokers`, which must be a memory broker.
pub(super) fn validate(
    at: &Locator,
    raw: RawSimulator,
    brokers: &[Broker],
) -> Result<Simulator, ConfigError> {
    let Some(broker) = brokers
        .iter()
        .position(|b| b.name == *raw.broker.get_ref() && b.kind == BrokerKind::Memory)
    else {
        return Err(at.error(
            raw.broker.span(),
            format!(
                "no memory broker named {:?}: the simulator publishes on a memory broker",
                raw.broker.get_ref()
            ),
        ));
    };
    Ok(Simulator {
        broker,
        devices: bounded(
            at,
            "devices",
            raw.devices.as_ref(),
            DEFAULT_SIMULATED_DEVICES,
            SIMULATED_DEVICES_RANGE,
        )?,
        interval: duration(at, raw.interval.as_ref(), DEFAULT_SIMULATOR_INTERVAL)?,
    })
}
