//! Simulated IoT devices for the demo: each publishes its temperature, humidity and status on the
//! configured memory broker, as `devices/<id>/<metric>`, every interval.

use bytes::Bytes;
use sluice_bridge::Bridge;
use std::sync::Arc;
use std::time::Duration;

/// `[simulator]`: simulated IoT devices publishing on a memory broker, for the demo dashboard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Simulator {
    /// Index into `Config::brokers` (a memory broker).
    pub broker: usize,
    pub devices: usize,
    pub interval: Duration,
}

/// One device's state, drifting a little at every tick.
struct Device {
    id: String,
    temperature: f64,
    humidity: f64,
}

/// A small deterministic generator (xorshift): the demo needs variety, not statistics.
struct Drift(u64);

impl Drift {
    /// A value in [-1, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 2000) as f64 / 1000.0 - 1.0
    }
}

/// Publishes until the task is dropped.
pub async fn run(settings: Simulator, bridge: Arc<dyn Bridge>) {
    let mut drift = Drift(0x9e37_79b9_7f4a_7c15);
    let mut devices: Vec<Device> = (1..=settings.devices)
        .map(|n| Device {
            id: format!("sensor-{n}"),
            temperature: 19.0 + n as f64,
            humidity: 40.0 + 2.0 * n as f64,
        })
        .collect();
    let mut ticks = tokio::time::interval(settings.interval);
    loop {
        ticks.tick().await;
        for device in &mut devices {
            device.temperature = (device.temperature + drift.next() * 0.4).clamp(-20.0, 60.0);
            device.humidity = (device.humidity + drift.next()).clamp(5.0, 95.0);
            let status = if device.temperature > 30.0 {
                "alarm"
            } else if device.temperature > 26.0 {
                "warning"
            } else {
                "ok"
            };
            let readings = [
                ("temperature", format!("{:.1}", device.temperature)),
                ("humidity", format!("{:.1}", device.humidity)),
                ("status", status.to_owned()),
            ];
            for (metric, value) in readings {
                let topic = format!("devices/{}/{metric}", device.id);
                if let Err(e) = bridge.publish(&topic, Bytes::from(value)).await {
                    tracing::debug!(%topic, error = %e, "simulator publish failed");
                }
            }
        }
    }
}
