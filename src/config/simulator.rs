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

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_accepted, assert_refused, ROUTE};

    #[test]
    fn devices_and_interval_are_refused_past_their_bounds_and_accepted_at_them() {
        let simulator = |key: &str| format!("{ROUTE}[simulator]\nbroker = \"m\"\n{key}\n");
        assert_refused(&[
            (
                simulator("interval = \"2days\""),
                "9:12: duration \"2days\" is out of range",
            ),
            (
                simulator("interval = \"0ms\""),
                "9:12: duration \"0ms\" is out of range",
            ),
            (
                simulator("devices = 1001"),
                "9:11: devices must be between 1 and 1000",
            ),
            (
                simulator("devices = 0"),
                "9:11: devices must be between 1 and 1000",
            ),
            (
                format!("{ROUTE}[simulator]\nbroker = \"nope\"\n"),
                "8:10: no memory broker named \"nope\"",
            ),
        ]);
        assert_accepted(&[simulator("devices = 1000\ninterval = \"1ms\"")]);
    }
}
