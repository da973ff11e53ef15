//! Builds one bridge per configured broker (NATS, MQTT, an upstream SSE origin, or in memory).

use crate::config::{Broker, BrokerKind};
use sluice_bridge::{Bridge, BridgeError};
use sluice_memory::MemoryBridge;
use sluice_mqtt::{MqttBridge, MqttSettings};
use sluice_nats::{NatsBridge, NatsSettings};
use sluice_sse::SseBridge;
use std::sync::Arc;

/// Connects every broker, in configuration order. A broker that is down is not an error: its bridge
/// keeps retrying in the background. Must run inside a tokio runtime that outlives the bridges.
pub async fn connect_all(brokers: &[Broker]) -> Result<Vec<Arc<dyn Bridge>>, BridgeError> {
    let mut bridges: Vec<Arc<dyn Bridge>> = Vec::with_capacity(brokers.len());
    for broker in brokers {
        bridges.push(connect(broker).await?);
    }
    Ok(bridges)
}

/// Connects one broker (see [`connect_all`]); a configuration reload connects the brokers it adds
/// with this, on the same runtime. Dropping the last handle of a bridge disconnects it.
pub async fn connect(broker: &Broker) -> Result<Arc<dyn Bridge>, BridgeError> {
    let bridge: Arc<dyn Bridge> = match &broker.kind {
        BrokerKind::Memory => Arc::new(MemoryBridge::new()),
        BrokerKind::Nats {
            urls,
            max_control_line,
        } => Arc::new(
            NatsBridge::connect(
                &broker.name,
                &NatsSettings {
                    urls: urls.clone(),
                    max_control_line: *max_control_line,
                },
            )
            .await?,
        ),
        BrokerKind::Mqtt {
            url,
            client_id,
            qos,
        } => Arc::new(MqttBridge::connect(
            &broker.name,
            &MqttSettings {
                url: url.clone(),
                client_id: client_id.clone(),
                qos: *qos,
            },
        )?),
        BrokerKind::Sse(settings) => Arc::new(SseBridge::new(&broker.name, settings)?),
    };
    tracing::info!(broker = %broker.name, kind = kind_name(&broker.kind), "broker configured");
    Ok(bridge)
}

fn kind_name(kind: &BrokerKind) -> &'static str {
    match kind {
        BrokerKind::Memory => "memory",
        BrokerKind::Nats { .. } => "nats",
        BrokerKind::Mqtt { .. } => "mqtt",
        BrokerKind::Sse(_) => "sse",
    }
}
